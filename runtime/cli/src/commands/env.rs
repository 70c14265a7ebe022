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

/// The variables of a `.env` file, in order (parsed by `dotenvy`, so
/// quoting, `export` and comments work as in other tools).
pub fn read_dotenv(file: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    dotenvy::from_path_iter(file)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?
        .map(|item| item.map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display())))
        .collect()
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
