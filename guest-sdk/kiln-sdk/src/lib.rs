//! Write Kiln tasks in Rust.
//!
//! A Kiln bundle is a crate built for `wasm32-unknown-unknown` whose tasks are
//! `async` functions marked with [`task`], listed once with [`bundle!`]:
//!
//! ```ignore
//! use kiln_sdk::{task, Context, TaskError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Hello { name: String }
//!
//! #[derive(Serialize)]
//! struct Greeting { message: String }
//!
//! #[task(id = "hello-world")]
//! async fn hello_world(payload: Hello, ctx: &Context) -> Result<Greeting, TaskError> {
//!     ctx.log.info("greeting", &[("name", &payload.name)]);
//!     Ok(Greeting { message: format!("Hello, {}!", payload.name) })
//! }
//!
//! kiln_sdk::bundle!(hello_world);
//! ```
//!
//! `kiln build` turns the crate into a component bundle and `kiln deploy`
//! uploads it. If the payload type also derives `schemars::JsonSchema`, the
//! task is a *schema task*: the server validates payloads against its JSON
//! Schema when a run is triggered and rejects invalid ones.
//!
//! Inside the guest, a small executor ([`mod@executor`]) drives the task's
//! future. When the future waits on the host it hands control back, so no
//! guest frame stays on the stack while a run waits.

extern crate self as kiln_sdk;

// Only on the target `kiln build` compiles for: on WASI, libc's allocator
// may already hold the memory after `__heap_base`.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
pub mod allocator;
pub mod bindings;
mod context;
pub mod env;
mod error;
pub mod executor;
pub mod fetch;
pub mod hooks;
mod log;
pub mod metadata;
pub mod queues;
pub mod retry;
pub mod schedules;
pub mod streams;
pub mod tasks;
pub mod wait;

pub use context::Context;
pub use error::TaskError;
pub use hooks::Hooks;
pub use kiln_manifest::{Machine, RetryPolicy};
pub use kiln_sdk_macros::task;
pub use log::Logger;
pub use queues::{Queue, RateLimit};

/// Items the [`task`] and [`bundle!`] macros expand to. Not a stable API.
#[doc(hidden)]
pub mod __private;

/// Lists a bundle's tasks and exports the bundle's entry points. Call it once,
/// at the root of the crate, with every `#[task]` function's name.
#[macro_export]
macro_rules! bundle {
    ($($task:path),+ $(,)? $(; queues: $($queue:path),+ $(,)?)?) => {
        #[doc(hidden)]
        struct __KilnBundle;

        #[doc(hidden)]
        static __KILN_TASKS: &[$crate::__private::TaskEntry] =
            &[$($crate::__private::TaskEntry::of::<$task>()),+];

        #[doc(hidden)]
        static __KILN_QUEUES: &[&$crate::Queue] = &[$($(&$queue),+)?];

        impl $crate::bindings::Guest for __KilnBundle {
            fn describe() -> ::std::string::String {
                $crate::__private::describe(__KILN_TASKS, __KILN_QUEUES)
            }
            fn start(ctx: $crate::bindings::kiln::task::types::StartContext)
                -> $crate::bindings::kiln::task::types::Step {
                $crate::executor::start(__KILN_TASKS, ctx)
            }
            fn resume(wake: $crate::bindings::kiln::task::types::Wake)
                -> $crate::bindings::kiln::task::types::Step {
                $crate::executor::resume(wake)
            }
            fn cancel(reason: ::std::string::String) {
                $crate::executor::cancel(reason)
            }
            fn snapshot_grow(pages: u32) -> u32 {
                $crate::executor::snapshot_grow(pages)
            }
            fn snapshot_read() -> ::std::vec::Vec<u8> {
                ::std::vec::Vec::new()
            }
            fn snapshot_write(_image: ::std::vec::Vec<u8>) {}
        }

        $crate::bindings::__export_kiln_bundle!(__KilnBundle);
    };
}
