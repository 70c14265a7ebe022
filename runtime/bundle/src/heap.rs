//! Room for the guest's heap in the memory a bundle starts with.
//!
//! The linker sizes a Rust guest's initial memory to its stack and static
//! data, leaving the heap almost no room: the first allocation of every
//! attempt grew linear memory, and the next instance in the same pool slot
//! had it shrunk back with an `mprotect` whose TLB flush interrupts every
//! core the server runs on. [`reserve`] raises the module's initial memory
//! by [`HEAP_RESERVE`]; the guest SDK's allocator starts its heap in that
//! room, so an attempt that stays within it never grows memory.
//!
//! The room is not free for a run that waits: a snapshot copies the whole
//! linear memory and keeps one 8-byte hash per 4 KiB page, so each capture
//! and restore handles 256 KiB more and each layer stores 512 bytes more
//! (zero pages themselves are not stored). Where the kernel lets wasmtime
//! find the pages an attempt dirtied (`PAGEMAP_SCAN`, Linux 6.7 and later),
//! pages a guest never touches cost an instance nothing resident; on older
//! kernels a slot's reset zeroes the part of memory it keeps resident whole,
//! this room included.

use wasm_encoder::{Encode, MemorySection, MemoryType};
use wasmparser::{Parser, Payload};

/// The heap room added to a bundle's initial memory: 256 KiB. A small
/// task's heap fits in it (`kiln-sandbox`'s tests check `hello-world`'s);
/// a task that needs more grows memory past it.
pub const HEAP_RESERVE: u64 = 256 * 1024;

/// WebAssembly's page size, for memories without a custom one.
const WASM_PAGE: u64 = 64 * 1024;

/// Returns `module` with its one defined memory's minimum raised by
/// `bytes` (rounded up to whole pages): the memory section is
/// written anew, every other section is copied byte for byte.
///
/// A module that imports its memory, defines several, declares a maximum
/// the raise would pass, or uses memory64, shared or custom-page-size
/// memories, is returned as it was: the allocator then grows memory as
/// before, which is slower but correct.
pub fn reserve(module: &[u8], bytes: u64) -> Result<Vec<u8>, String> {
    let pages = bytes.div_ceil(WASM_PAGE);
    // Sections follow one another, so each starts where the one before
    // ended: the memory section's header begins at the previous end.
    let mut previous_end = 0;
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.map_err(|e| format!("{e:#}"))?;
        match &payload {
            Payload::Version { range, .. } => previous_end = range.end,
            Payload::MemorySection(reader) => {
                let memories = reader
                    .clone()
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("{e:#}"))?;
                let [memory] = memories.as_slice() else {
                    return Ok(module.to_vec());
                };
                if memory.memory64 || memory.shared || memory.page_size_log2.is_some() {
                    return Ok(module.to_vec());
                }
                let minimum = memory.initial.saturating_add(pages);
                // A 32-bit memory holds at most 65,536 pages.
                let ceiling = memory.maximum.unwrap_or(65_536).min(65_536);
                if minimum > ceiling {
                    return Ok(module.to_vec());
                }
                let mut section = MemorySection::new();
                section.memory(MemoryType {
                    minimum,
                    maximum: memory.maximum,
                    memory64: false,
                    shared: false,
                    page_size_log2: None,
                });
                let mut out = Vec::with_capacity(module.len() + 8);
                out.extend_from_slice(&module[..previous_end]);
                out.push(wasm_encoder::SectionId::Memory as u8);
                section.encode(&mut out);
                out.extend_from_slice(&module[reader.range().end..]);
                return Ok(out);
            }
            other => {
                if let Some((_, range)) = other.as_section() {
                    previous_end = range.end;
                }
            }
        }
    }
    Ok(module.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{ExportKind, ExportSection, Module};

    fn module_with(memory: Option<MemoryType>) -> Vec<u8> {
        let mut module = Module::new();
        if let Some(memory) = memory {
            let mut memories = MemorySection::new();
            memories.memory(memory);
            module.section(&memories);
            let mut exports = ExportSection::new();
            exports.export("memory", ExportKind::Memory, 0);
            module.section(&exports);
        }
        module.section(&wasm_encoder::CustomSection {
            name: "kept".into(),
            data: b"every byte".as_slice().into(),
        });
        module.finish()
    }

    fn memory(minimum: u64, maximum: Option<u64>) -> MemoryType {
        MemoryType {
            minimum,
            maximum,
            memory64: false,
            shared: false,
            page_size_log2: None,
        }
    }

    fn memories_of(module: &[u8]) -> Vec<wasmparser::MemoryType> {
        let mut found = Vec::new();
        for payload in Parser::new(0).parse_all(module) {
            if let Payload::MemorySection(reader) = payload.unwrap() {
                found.extend(reader.into_iter().map(|m| m.unwrap()));
            }
        }
        found
    }

    #[test]
    fn raises_the_initial_memory_by_whole_pages_and_keeps_the_rest() {
        let before = module_with(Some(memory(17, None)));
        let after = reserve(&before, HEAP_RESERVE).unwrap();
        let memories = memories_of(&after);
        assert_eq!(memories.len(), 1);
        assert_eq!(memories[0].initial, 17 + 4);
        assert_eq!(memories[0].maximum, None);
        wasmparser::Validator::new().validate_all(&after).unwrap();
        // Only the minimum's byte changed (17 and 21 both take one byte).
        assert_eq!(after.len(), before.len());
        let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(changed, 1);
        // A part of a page still takes a whole page.
        let after = reserve(&before, 1).unwrap();
        assert_eq!(memories_of(&after)[0].initial, 18);
    }

    #[test]
    fn sections_before_the_memory_are_kept_and_a_longer_minimum_fits() {
        use wasm_encoder::{EntityType, FunctionSection, ImportSection, TypeSection};
        let mut module = Module::new();
        module.section(&wasm_encoder::CustomSection {
            name: "first".into(),
            data: b"before everything".as_slice().into(),
        });
        let mut types = TypeSection::new();
        types.ty().function([], []);
        module.section(&types);
        let mut imports = ImportSection::new();
        imports.import("kiln", "f", EntityType::Function(0));
        module.section(&imports);
        let mut functions = FunctionSection::new();
        functions.function(0);
        module.section(&functions);
        let mut memories = MemorySection::new();
        // 126 pages take one LEB byte, 130 take two.
        memories.memory(memory(126, None));
        module.section(&memories);
        let mut code = wasm_encoder::CodeSection::new();
        let mut body = wasm_encoder::Function::new([]);
        body.instruction(&wasm_encoder::Instruction::End);
        code.function(&body);
        module.section(&code);
        let before = module.finish();
        let after = reserve(&before, HEAP_RESERVE).unwrap();
        wasmparser::Validator::new().validate_all(&after).unwrap();
        assert_eq!(memories_of(&after)[0].initial, 130);
        assert_eq!(after.len(), before.len() + 1);
        // What comes before the memory section and after it is unchanged.
        let memory_at = before
            .windows(3)
            .position(|w| w == [5, 3, 1])
            .expect("the memory section's header");
        assert_eq!(after[..memory_at], before[..memory_at]);
        assert_eq!(after[memory_at + 6..], before[memory_at + 5..]);
    }

    #[test]
    fn a_maximum_is_kept_and_never_passed() {
        let before = module_with(Some(memory(2, Some(8))));
        let after = reserve(&before, HEAP_RESERVE).unwrap();
        assert_eq!(memories_of(&after)[0].initial, 6);
        assert_eq!(memories_of(&after)[0].maximum, Some(8));
        let tight = module_with(Some(memory(6, Some(8))));
        assert_eq!(reserve(&tight, HEAP_RESERVE).unwrap(), tight);
    }

    #[test]
    fn a_module_without_a_memory_is_unchanged() {
        let before = module_with(None);
        assert_eq!(reserve(&before, HEAP_RESERVE).unwrap(), before);
    }

    #[test]
    fn bytes_that_are_not_a_module_are_refused() {
        assert!(reserve(b"not a module", HEAP_RESERVE).is_err());
    }
}
