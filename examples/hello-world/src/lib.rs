//! The smallest Kiln bundle: one task that greets someone.

use kiln_sdk::{Context, TaskError, task};
use serde::{Deserialize, Serialize};

/// Who to greet.
#[derive(Debug, Deserialize)]
pub struct Hello {
    /// The name to greet.
    pub name: String,
}

/// The greeting.
#[derive(Debug, Serialize)]
pub struct Greeting {
    /// `Hello, <name>!`
    pub message: String,
}

/// Greets `payload.name`.
#[task(id = "hello-world")]
pub async fn hello_world(payload: Hello, ctx: &Context) -> Result<Greeting, TaskError> {
    ctx.log.info("greeting", &[("name", &payload.name)]);
    Ok(Greeting {
        message: format!("Hello, {}!", payload.name),
    })
}

kiln_sdk::bundle!(hello_world);
