//! The `#[task]` attribute of Kiln's guest SDK (`kiln-sdk`).
//!
//! It leaves the `async fn` as written and adds a marker type of the same name
//! (in the type namespace) that implements `kiln_sdk::__private::Task`: the
//! task's manifest entry and the glue that parses the payload and runs the
//! function. `kiln_sdk::bundle!` lists those marker types.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::quote;
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitBool, LitFloat, LitInt, LitStr, ReturnType, Type};

/// Marks an `async fn(payload: P, ctx: &Context) -> Result<O, TaskError>` as a
/// Kiln task.
///
/// Options (all optional but `id`, which defaults to the function's name with
/// `_` turned into `-`):
/// - `id = "send-email"`: the task id backends trigger it by;
/// - `queue = EMAILS`: the `const` [`Queue`](../kiln_sdk/queues/struct.Queue.html)
///   it runs on (its own queue, `task/<id>`, by default); `queue = "emails"`
///   names a queue declared elsewhere in the bundle;
/// - `concurrency_limit = 1`: the limit of the task's own queue;
/// - `machine = "small-2x"`: the machine preset (`small-1x` by default);
/// - `max_duration = 300`: the most execution time in seconds, waits excluded;
/// - `retry(max_attempts = 5, factor = 2.0, min_timeout_ms = 1000,
///   max_timeout_ms = 30000, randomize = true,
///   out_of_memory_machine = "medium-1x")`: the retry policy; an attempt
///   that runs out of memory is retried on `out_of_memory_machine` if set;
/// - `hooks = HOOKS`: a `const` [`Hooks`](../kiln_sdk/hooks/struct.Hooks.html)
///   with the task's lifecycle hooks;
/// - `env = ["STRIPE_KEY", "DATABASE_URL"]`: the environment variables the
///   task reads (`kiln_sdk::env::var`); a deploy to an environment that
///   lacks one warns, or with `--strict` refuses;
/// - `cron = "0 9 * * 1-5"`, `timezone = "America/New_York"`: a declarative
///   schedule, for scheduled tasks (those whose payload is
///   `kiln_sdk::schedules::ScheduledPayload`); read in UTC without a time
///   zone, and synced on each deploy.
///
/// If `P` derives `schemars::JsonSchema` the task is a schema task: the server
/// validates each payload against that schema when the run is triggered.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// How a task names its queue.
enum QueueRef {
    /// By name: declared by another task or in `bundle!`.
    Name(String),
    /// A `const` `kiln_sdk::Queue`, which this task declares too.
    Declared(syn::Path),
}

#[derive(Default)]
struct Options {
    id: Option<String>,
    queue: Option<QueueRef>,
    concurrency_limit: Option<u32>,
    machine: Option<String>,
    max_duration: Option<u64>,
    retry: Vec<(String, proc_macro2::TokenStream)>,
    hooks: Option<syn::Path>,
    cron: Option<LitStr>,
    timezone: Option<LitStr>,
    env: Vec<LitStr>,
}

const MACHINES: [&str; 7] = [
    "micro",
    "small-1x",
    "small-2x",
    "medium-1x",
    "medium-2x",
    "large-1x",
    "large-2x",
];

fn parse_options(attr: proc_macro2::TokenStream) -> syn::Result<Options> {
    let mut options = Options::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("id") {
            options.id = Some(meta.value()?.parse::<LitStr>()?.value());
        } else if meta.path.is_ident("queue") {
            let value = meta.value()?;
            options.queue = Some(if value.peek(LitStr) {
                QueueRef::Name(value.parse::<LitStr>()?.value())
            } else {
                QueueRef::Declared(value.parse::<syn::Path>()?)
            });
        } else if meta.path.is_ident("concurrency_limit") {
            options.concurrency_limit = Some(meta.value()?.parse::<LitInt>()?.base10_parse()?);
        } else if meta.path.is_ident("machine") {
            let lit = meta.value()?.parse::<LitStr>()?;
            if !MACHINES.contains(&lit.value().as_str()) {
                return Err(syn::Error::new(
                    lit.span(),
                    format!("unknown machine preset; use one of {}", MACHINES.join(", ")),
                ));
            }
            options.machine = Some(lit.value());
        } else if meta.path.is_ident("max_duration") {
            options.max_duration = Some(meta.value()?.parse::<LitInt>()?.base10_parse()?);
        } else if meta.path.is_ident("retry") {
            meta.parse_nested_meta(|retry| {
                let name = retry
                    .path
                    .get_ident()
                    .map(|i| i.to_string())
                    .unwrap_or_default();
                let value = match name.as_str() {
                    "max_attempts" => {
                        let v: u32 = retry.value()?.parse::<LitInt>()?.base10_parse()?;
                        quote!(#v)
                    }
                    "min_timeout_ms" | "max_timeout_ms" => {
                        let v: u64 = retry.value()?.parse::<LitInt>()?.base10_parse()?;
                        quote!(#v)
                    }
                    "factor" => {
                        let v: f64 = retry.value()?.parse::<LitFloat>()?.base10_parse()?;
                        quote!(#v)
                    }
                    "randomize" => {
                        let v = retry.value()?.parse::<LitBool>()?.value;
                        quote!(#v)
                    }
                    "out_of_memory_machine" => {
                        let lit = retry.value()?.parse::<LitStr>()?;
                        if !MACHINES.contains(&lit.value().as_str()) {
                            return Err(syn::Error::new(
                                lit.span(),
                                format!("unknown machine preset; use one of {}", MACHINES.join(", ")),
                            ));
                        }
                        quote!(#lit.parse().ok())
                    }
                    _ => {
                        return Err(retry.error(
                            "unknown retry option; use max_attempts, factor, min_timeout_ms, max_timeout_ms, randomize or out_of_memory_machine",
                        ));
                    }
                };
                options.retry.push((name, value));
                Ok(())
            })?;
        } else if meta.path.is_ident("hooks") {
            options.hooks = Some(meta.value()?.parse::<syn::Path>()?);
        } else if meta.path.is_ident("cron") {
            let lit = meta.value()?.parse::<LitStr>()?;
            if lit.value().split_whitespace().count() != 5 {
                return Err(syn::Error::new(
                    lit.span(),
                    "a cron has five fields: minute hour day-of-month month day-of-week",
                ));
            }
            options.cron = Some(lit);
        } else if meta.path.is_ident("env") {
            let list = meta.value()?.parse::<syn::ExprArray>()?;
            for element in list.elems {
                match element {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(name),
                        ..
                    }) => options.env.push(name),
                    other => {
                        return Err(syn::Error::new(
                            other.span(),
                            "`env` lists variable names as string literals: env = [\"STRIPE_KEY\"]",
                        ));
                    }
                }
            }
        } else if meta.path.is_ident("timezone") {
            options.timezone = Some(meta.value()?.parse::<LitStr>()?);
        } else {
            return Err(meta.error(
                "unknown task option; use id, queue, concurrency_limit, machine, max_duration, retry(...), hooks, env, cron or timezone",
            ));
        }
        Ok(())
    });
    parser.parse2(attr)?;
    if let (Some(tz), None) = (&options.timezone, &options.cron) {
        return Err(syn::Error::new(
            tz.span(),
            "`timezone` goes with `cron`: give the schedule's cron too",
        ));
    }
    Ok(options)
}

fn expand(
    attr: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    let options = parse_options(attr)?;
    let function: ItemFn = syn::parse2(item)?;
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            "a Kiln task must be an `async fn`",
        ));
    }
    if sig.inputs.len() != 2 {
        return Err(syn::Error::new(
            sig.inputs.span(),
            "a Kiln task takes two arguments: `(payload: P, ctx: &kiln_sdk::Context)`",
        ));
    }
    let payload_type: Type = match &sig.inputs[0] {
        FnArg::Typed(pat) => (*pat.ty).clone(),
        FnArg::Receiver(r) => {
            return Err(syn::Error::new(r.span(), "a Kiln task cannot take `self`"));
        }
    };
    if matches!(sig.output, ReturnType::Default) {
        return Err(syn::Error::new(
            sig.span(),
            "a Kiln task returns `Result<O, kiln_sdk::TaskError>`",
        ));
    }

    let name = &sig.ident;
    let vis = &function.vis;
    let id = options
        .id
        .unwrap_or_else(|| name.to_string().trim_start_matches("r#").replace('_', "-"));
    if options.queue.is_some() && options.concurrency_limit.is_some() {
        return Err(syn::Error::new(
            Span::call_site(),
            "`concurrency_limit` limits a task's own queue; a task on a shared queue takes the queue's limit",
        ));
    }
    let (queue, queue_decl) = match &options.queue {
        Some(QueueRef::Name(q)) => (
            quote!(::core::option::Option::Some(::std::string::String::from(#q))),
            None,
        ),
        Some(QueueRef::Declared(path)) => (
            quote!(::core::option::Option::Some(::std::string::String::from(#path.name()))),
            Some(
                quote!(const QUEUE: ::core::option::Option<&'static ::kiln_sdk::Queue> =
                ::core::option::Option::Some(&#path);),
            ),
        ),
        None => (quote!(::core::option::Option::None), None),
    };
    let concurrency_limit = match options.concurrency_limit {
        Some(n) => quote!(::core::option::Option::Some(#n)),
        None => quote!(::core::option::Option::None),
    };
    let machine = match &options.machine {
        Some(m) => quote!(#m.parse().unwrap_or_default()),
        None => quote!(::core::default::Default::default()),
    };
    let max_duration = match options.max_duration {
        Some(secs) => quote!(::core::option::Option::Some(#secs)),
        None => quote!(::core::option::Option::None),
    };
    let retry_fields = options.retry.iter().map(|(field, value)| {
        let field = syn::Ident::new(field, Span::call_site());
        quote!(retry.#field = #value;)
    });
    let hooks = options.hooks.as_ref().map(|path| {
        quote!(const HOOKS: ::core::option::Option<&'static ::kiln_sdk::__private::Hooks> =
            ::core::option::Option::Some(&#path);)
    });
    let cron = match &options.cron {
        Some(pattern) => {
            let timezone = match &options.timezone {
                Some(tz) => quote!(::core::option::Option::Some(::std::string::String::from(#tz))),
                None => quote!(::core::option::Option::None),
            };
            quote!(::core::option::Option::Some(::kiln_sdk::__private::DeclaredCron {
                pattern: ::std::string::String::from(#pattern),
                timezone: #timezone,
            }))
        }
        None => quote!(::core::option::Option::None),
    };
    let env = options.env.iter();
    let doc = format!("The Kiln task `{id}` (defined by the `async fn` of the same name).");

    Ok(quote! {
        #function

        #[doc = #doc]
        #[allow(non_camel_case_types)]
        #vis struct #name {}

        impl ::kiln_sdk::__private::Task for #name {
            const ID: &'static str = #id;
            #hooks
            #queue_decl

            fn manifest() -> ::kiln_sdk::__private::TaskManifest {
                #[allow(unused_imports)]
                use ::kiln_sdk::__private::{
                    HasSchema as _, IsScheduled as _, NoSchema as _, NotScheduled as _,
                };
                #[allow(unused_mut)]
                let mut retry = ::kiln_sdk::__private::RetryPolicy::default();
                #(#retry_fields)*
                ::kiln_sdk::__private::TaskManifest {
                    id: ::std::string::String::from(<Self as ::kiln_sdk::__private::Task>::ID),
                    payload_schema: (&::kiln_sdk::__private::SchemaProbe::<#payload_type>::new())
                        .payload_schema(),
                    queue: #queue,
                    concurrency_limit: #concurrency_limit,
                    retry,
                    machine: #machine,
                    max_duration_secs: #max_duration,
                    source: ::core::option::Option::Some(::std::format!("{}:{}", ::core::file!(), ::core::line!())),
                    scheduled: (&::kiln_sdk::__private::ScheduledProbe::<#payload_type>::new())
                        .is_scheduled(),
                    cron: #cron,
                    env: ::std::vec![#(::std::string::String::from(#env)),*],
                }
            }

            fn start(
                payload: &str,
                ctx: ::kiln_sdk::Context,
            ) -> ::kiln_sdk::__private::TaskFuture {
                let payload: #payload_type = match ::kiln_sdk::__private::parse_payload(payload) {
                    ::core::result::Result::Ok(payload) => payload,
                    ::core::result::Result::Err(error) => {
                        return ::kiln_sdk::__private::ready_err(error);
                    }
                };
                ::std::boxed::Box::pin(async move {
                    let ctx = ctx;
                    let output = #name(payload, &ctx).await?;
                    ::kiln_sdk::__private::to_output(&output)
                })
            }
        }
    })
}
