//! Whether a snapshot holds all of a guest's state.
//!
//! Kiln snapshots a guest at a wait by copying its linear memory, and
//! restores it into a fresh instance of the bundle. Everything else an
//! instance has starts as the bundle declares it: globals at their initial
//! values, tables as their element segments fill them. That is the whole
//! state of a guest built with kiln-sdk, which keeps everything in its one
//! memory and, between polls, has no frame on its stack (so the stack
//! pointer is back at its initial value). A bundle that keeps state
//! elsewhere would resume with part of it lost, so it is refused at deploy:
//!
//! - more than one memory defined in the component;
//! - a mutable global other than a core module's stack pointer (its one
//!   mutable `i32` global, named `__stack_pointer` where the module has
//!   names);
//! - code that changes a table at run time (`table.grow`, `table.set`,
//!   `table.fill`, `table.copy`, `table.init`).

use wasmparser::{KnownCustom, Name, Operator, Parser, Payload, TypeRef, ValType};

/// What one core module defines that a memory snapshot might miss.
#[derive(Default)]
struct Module {
    /// Globals imported, which come first in the global index space.
    imported_globals: u32,
    /// Mutable globals defined here: index and type.
    mutable: Vec<(u32, ValType)>,
    /// Defined globals so far (to number the mutable ones).
    defined_globals: u32,
    /// Global names from the name section.
    names: Vec<(u32, String)>,
    /// The first instruction found that changes a table.
    table_op: Option<&'static str>,
}

impl Module {
    /// `Err` if the module has a mutable global other than its stack
    /// pointer.
    fn check_globals(&self, number: usize) -> Result<(), String> {
        let name_of = |index: u32| {
            self.names
                .iter()
                .find(|(i, _)| *i == index)
                .map(|(_, n)| n.as_str())
        };
        let mut stack_pointer = None;
        for &(index, ty) in &self.mutable {
            let name = name_of(index);
            let is_stack_pointer = ty == ValType::I32
                && stack_pointer.is_none()
                && match name {
                    Some(name) => name == "__stack_pointer",
                    None => true,
                };
            if is_stack_pointer {
                stack_pointer = Some(index);
                continue;
            }
            let what = match name {
                Some(name) => format!("`{name}`"),
                None => format!("number {index}"),
            };
            return Err(format!(
                "core module {number} has a mutable global {what} besides its stack pointer"
            ));
        }
        Ok(())
    }
}

/// The name of an instruction that changes a table, if `op` is one.
fn table_change(op: &Operator<'_>) -> Option<&'static str> {
    Some(match op {
        Operator::TableGrow { .. } => "table.grow",
        Operator::TableSet { .. } => "table.set",
        Operator::TableFill { .. } => "table.fill",
        Operator::TableCopy { .. } => "table.copy",
        Operator::TableInit { .. } => "table.init",
        _ => return None,
    })
}

/// `Err` with the reason if a snapshot of the component's memory would not
/// hold all of its state. Runs before validation, so that the reason is
/// this and not a limit of the instance pool; bytes it cannot read are left
/// for validation to refuse.
pub(crate) fn check(bytes: &[u8]) -> Result<(), String> {
    match read(bytes) {
        Ok(reason) => reason,
        Err(_) => Ok(()),
    }
}

/// The check, or `Err` if the bytes could not be read.
fn read(bytes: &[u8]) -> Result<Result<(), String>, wasmparser::BinaryReaderError> {
    let mut modules: Vec<Module> = Vec::new();
    // Modules being read: nested modules come inline, between their
    // `Version` and `End`.
    let mut open: Vec<usize> = Vec::new();
    let mut memories = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload?;
        match payload {
            Payload::Version {
                encoding: wasmparser::Encoding::Module,
                ..
            } => {
                modules.push(Module::default());
                open.push(modules.len() - 1);
            }
            Payload::Version { .. } => open.push(usize::MAX),
            Payload::End(_) => {
                open.pop();
            }
            other => {
                let Some(&current) = open.last().filter(|&&m| m != usize::MAX) else {
                    continue;
                };
                let module = &mut modules[current];
                read_module_payload(module, other, &mut memories)?;
            }
        }
    }
    if memories > 1 {
        return Ok(Err(format!(
            "it defines {memories} memories, and Kiln snapshots one linear memory"
        )));
    }
    for (number, module) in modules.iter().enumerate() {
        if let Err(reason) = module.check_globals(number) {
            return Ok(Err(reason));
        }
        if let Some(op) = module.table_op {
            return Ok(Err(format!(
                "core module {number} changes a table at run time (`{op}`), which a snapshot of memory does not keep"
            )));
        }
    }
    Ok(Ok(()))
}

fn read_module_payload(
    module: &mut Module,
    payload: Payload<'_>,
    memories: &mut usize,
) -> Result<(), wasmparser::BinaryReaderError> {
    match payload {
        Payload::ImportSection(imports) => {
            for import in imports.into_imports() {
                if let TypeRef::Global(_) = import?.ty {
                    module.imported_globals += 1;
                }
            }
        }
        Payload::MemorySection(section) => *memories += section.count() as usize,
        Payload::GlobalSection(globals) => {
            for global in globals {
                let global = global?;
                let index = module.imported_globals + module.defined_globals;
                module.defined_globals += 1;
                if global.ty.mutable {
                    module.mutable.push((index, global.ty.content_type));
                }
            }
        }
        Payload::CodeSectionEntry(body) if module.table_op.is_none() => {
            let mut ops = body.get_operators_reader()?;
            while !ops.eof() {
                if let Some(op) = table_change(&ops.read()?) {
                    module.table_op = Some(op);
                    break;
                }
            }
        }
        Payload::CustomSection(section) => {
            if let KnownCustom::Name(names) = section.as_known() {
                for name in names.into_iter().flatten() {
                    if let Name::Global(map) = name {
                        for naming in map.into_iter().flatten() {
                            module.names.push((naming.index, naming.name.to_string()));
                        }
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    fn module(text: &str) -> Vec<u8> {
        wat::parse_str(text).expect("valid text")
    }

    #[test]
    fn a_module_with_only_its_stack_pointer_is_safe() {
        let bytes = module(
            r#"(module
                (memory 1)
                (global $__stack_pointer (mut i32) (i32.const 1024))
                (global i32 (i32.const 7))
                (table 1 funcref)
                (func (call_indirect (i32.const 0))))"#,
        );
        assert_eq!(check(&bytes), Ok(()));
    }

    #[test]
    fn another_mutable_global_is_named_in_the_refusal() {
        let bytes = module(
            r#"(module
                (memory 1)
                (global $__stack_pointer (mut i32) (i32.const 1024))
                (global $counter (mut i64) (i64.const 0)))"#,
        );
        let reason = check(&bytes).unwrap_err();
        assert!(reason.contains("`counter`"), "{reason}");
    }

    #[test]
    fn two_memories_are_refused() {
        let bytes = module("(module (memory 1) (memory 1))");
        let reason = check(&bytes).unwrap_err();
        assert!(reason.contains("2 memories"), "{reason}");
    }

    #[test]
    fn growing_a_table_is_refused() {
        let bytes = module(
            r#"(module
                (table 1 funcref)
                (func (drop (table.grow (ref.null func) (i32.const 1)))))"#,
        );
        let reason = check(&bytes).unwrap_err();
        assert!(reason.contains("table.grow"), "{reason}");
    }

    #[test]
    fn bytes_it_cannot_read_are_left_to_validation() {
        assert_eq!(check(b"\0asm\x0d\0\x01\0garbage"), Ok(()));
        assert_eq!(check(b"not wasm"), Ok(()));
    }

    #[test]
    fn the_bundles_kiln_sdk_builds_are_safe() {
        for bundle in [kiln_fixtures::HELLO_WORLD, kiln_fixtures::PROBE] {
            let bytes = std::fs::read(bundle).expect("the fixture is built");
            assert_eq!(check(&bytes), Ok(()), "{bundle}");
        }
    }
}
