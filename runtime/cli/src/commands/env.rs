//! `kiln env ...`: a project environment's variables, read by its tasks
//! with `kiln_sdk::env::var`. With the environment's own key, or the
//! server's key for any project.

use crate::client::{Client, encode};
use serde_json::{Value, json};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

/// Which environment a command manages.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The project's ref (`default` is the project of the server's own
    /// environment).
    #[arg(long, default_value = "default")]
    project: String,
    /// The environment: `dev`, `staging`, `prod` or `preview`.
    #[arg(long, default_value = "dev")]
    env: String,
}

impl Target {
    fn path(&self) -> String {
        format!(
            "/api/v1/projects/{}/envvars/{}",
            encode(&self.project),
            encode(&self.env)
        )
    }
}

/// Set, list, unset and import environment variables.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Set a variable. Without VALUE, the value is read from standard input
    /// (so it stays out of the shell's history).
    Set {
        /// The variable's name.
        name: String,
        /// Its value.
        value: Option<String>,
        /// Make it a secret: write-only, and redacted from what runs leave
        /// behind.
        #[arg(long)]
        secret: bool,
        #[command(flatten)]
        target: Target,
    },
    /// List the variables; secrets show `<redacted>`.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Delete a variable.
    Unset {
        /// The variable's name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Set every variable of a `.env` file in one commit.
    Import {
        /// The `.env` file (`NAME=value` lines).
        file: PathBuf,
        /// Replace variables that exist (they are kept otherwise).
        #[arg(long = "override")]
        replace: bool,
        /// Make them secrets.
        #[arg(long)]
        secret: bool,
        #[command(flatten)]
        target: Target,
    },
}

/// The variables of a `.env` file, in order.
pub fn read_dotenv(file: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
    parse_dotenv(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

/// Parses `.env` text: `NAME=value` lines, `export` before a name, `#`
/// comments, `'single'` quotes taken literally, `"double"` quotes with
/// `\n`, `\"` and `\\` escapes (and newlines inside). Values are taken
/// as written: `$NAME` is not expanded, as in Trigger.dev's loader, so an
/// import never picks up the importing shell's variables (`dotenvy`, the
/// usual crate, always expands them).
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let (name, rest) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected NAME=value", n + 1))?;
        let name = name.trim().to_string();
        let rest = rest.trim_start();
        let value = match rest.chars().next() {
            Some(quote @ ('"' | '\'')) => {
                let mut value = String::new();
                let mut current = rest[1..].to_string();
                loop {
                    let mut chars = current.chars();
                    let mut closed = false;
                    while let Some(c) = chars.next() {
                        match c {
                            c if c == quote => {
                                closed = true;
                                break;
                            }
                            '\\' if quote == '"' => match chars.next() {
                                Some('n') => value.push('\n'),
                                Some('r') => value.push('\r'),
                                Some('t') => value.push('\t'),
                                Some(other) => value.push(other),
                                None => value.push('\\'),
                            },
                            c => value.push(c),
                        }
                    }
                    if closed {
                        let after = chars.as_str().trim();
                        if !(after.is_empty() || after.starts_with('#')) {
                            return Err(format!(
                                "line {}: unexpected text after the closing quote",
                                n + 1
                            ));
                        }
                        break;
                    }
                    // The quoted value goes on to the next line.
                    let (_, next) = lines
                        .next()
                        .ok_or_else(|| format!("line {}: a quote is not closed", n + 1))?;
                    value.push('\n');
                    current = next.to_string();
                }
                value
            }
            _ => match rest.find(" #") {
                Some(comment) => rest[..comment].trim_end().to_string(),
                None => rest.trim_end().to_string(),
            },
        };
        vars.push((name, value));
    }
    Ok(vars)
}

/// Runs `kiln env ...`.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let client = Client::from_env()?;
    match command {
        Command::Set {
            name,
            value,
            secret,
            target,
        } => {
            let value = match value {
                Some(value) => value,
                None => {
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text)?;
                    text.strip_suffix('\n')
                        .map(|t| t.strip_suffix('\r').unwrap_or(t))
                        .unwrap_or(&text)
                        .to_string()
                }
            };
            client
                .post_json(
                    &target.path(),
                    &json!({ "name": name, "value": value, "isSecret": secret }),
                )
                .await?;
            println!("Set {name}{}", if secret { " (secret)" } else { "" });
        }
        Command::List { target } => {
            let list = client.get_json(&target.path()).await?;
            for var in list.as_array().into_iter().flatten() {
                println!("{}", line(var));
            }
        }
        Command::Unset { name, target } => {
            client
                .delete(&format!("{}/{}", target.path(), encode(&name)))
                .await?;
            println!("Unset {name}");
        }
        Command::Import {
            file,
            replace,
            secret,
            target,
        } => {
            let vars = read_dotenv(&file)?;
            let count = vars.len();
            let variables: serde_json::Map<String, Value> =
                vars.into_iter().map(|(k, v)| (k, json!(v))).collect();
            client
                .post_json(
                    &format!("{}/import", target.path()),
                    &json!({ "variables": variables, "override": replace, "isSecret": secret }),
                )
                .await?;
            println!(
                "Imported {count} variable{} from {}",
                if count == 1 { "" } else { "s" },
                file.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn line(var: &Value) -> String {
    format!(
        "{}={}{}",
        var["name"].as_str().unwrap_or("-"),
        var["value"].as_str().unwrap_or(""),
        if var["isSecret"].as_bool() == Some(true) {
            "  (secret)"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_values_are_taken_as_written() {
        let text = "A=pa$$word\nB=\"x\\ny \\\"q\\\"\"\nC='$HOME \\n'\nD=\"two\nlines\" # note\nE=v # comment\n";
        assert_eq!(
            parse_dotenv(text).unwrap(),
            vec![
                ("A".into(), "pa$$word".into()),
                ("B".into(), "x\ny \"q\"".into()),
                ("C".into(), "$HOME \\n".into()),
                ("D".into(), "two\nlines".into()),
                ("E".into(), "v".into()),
            ]
        );
        assert!(parse_dotenv("NOEQUALS\n").is_err());
        assert!(parse_dotenv("A=\"open\n").is_err());
        assert!(parse_dotenv("A=\"x\" y\n").is_err());
    }

    #[test]
    fn a_dotenv_file_reads_in_order_with_quotes_exports_and_comments() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".env");
        std::fs::write(
            &file,
            "# keys\nSTRIPE_KEY=sk_test_1\nexport REGION=\"eu west\"\nEMPTY=\nQUOTED='a#b'\n",
        )
        .unwrap();
        assert_eq!(
            read_dotenv(&file).unwrap(),
            vec![
                ("STRIPE_KEY".into(), "sk_test_1".into()),
                ("REGION".into(), "eu west".into()),
                ("EMPTY".into(), "".into()),
                ("QUOTED".into(), "a#b".into()),
            ]
        );
        assert!(read_dotenv(&dir.path().join("missing")).is_err());
    }
}
