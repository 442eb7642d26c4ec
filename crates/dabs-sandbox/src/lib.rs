//! The WebAssembly sandbox shared by jobs (seed 002, R-JOB) and client modules (seed 001,
//! R-CL): a core module, validated once, runs each task in a fresh instance under a fuel budget
//! and a memory cap, with nothing imported. A module that does not validate, imports anything,
//! lacks the ABI's exports, traps, runs out of fuel or grows past its memory cap is that task's
//! [`TaskError`], never the host's: wasmi interprets, so no module code runs natively.
//!
//! The ABI is interop.md's ("Jobs"): the module exports `memory`, `alloc(len: i32) -> i32` and
//! `run(ptr: i32, len: i32) -> i64`. For each task the host calls `alloc` with the input's
//! length, writes the input there, calls `run`, and reads the output from `memory` at
//! `result >> 32` for `result & 0xffffffff` bytes.

use wasmi::errors::{ErrorKind, InstantiationError, MemoryError};
use wasmi::{Config, Engine, Linker, Store, StoreLimits, StoreLimitsBuilder, TrapCode};

/// What one task may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Fuel: roughly one unit per instruction executed (wasmi's accounting).
    pub fuel: u64,
    /// Largest linear memory, bytes (a multiple of 64 KiB pages is what a module can reach).
    pub memory_bytes: usize,
    /// Largest output a task may return, bytes.
    pub output_bytes: usize,
}

impl Default for Limits {
    /// 100 M fuel (a few hundred ms of interpretation), 64 MiB of memory, 16 MiB of output.
    fn default() -> Self {
        Limits { fuel: 100_000_000, memory_bytes: 64 << 20, output_bytes: 16 << 20 }
    }
}

/// Why a module or one of its tasks failed. The text says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The bytes are not a valid WebAssembly module.
    #[error("the module does not validate: {0}")]
    Invalid(String),
    /// The module imports something: jobs may import nothing.
    #[error("the module imports {module}.{name}; a job module may import nothing")]
    Import {
        /// The import's module.
        module: String,
        /// Its name.
        name: String,
    },
    /// An export of the ABI is missing or has the wrong type.
    #[error("the module lacks the export {0} (the ABI: memory, alloc(i32) -> i32, run(i32, i32) -> i64)")]
    MissingExport(&'static str),
    /// The module trapped.
    #[error("the task trapped: {0}")]
    Trap(String),
    /// The task used up its fuel.
    #[error("the task ran out of fuel (budget {0})")]
    OutOfFuel(u64),
    /// The module wanted more memory than the cap.
    #[error("the task needed more than its {0} bytes of memory")]
    OutOfMemory(usize),
    /// `alloc` or `run` answered a region outside the module's memory.
    #[error("{what} answered bytes {start}..{end}, outside the module's {size} bytes of memory")]
    OutOfBounds {
        /// Which export.
        what: &'static str,
        /// First byte.
        start: u64,
        /// One past the last.
        end: u64,
        /// The memory's size.
        size: usize,
    },
    /// The output is larger than allowed.
    #[error("the task's output is {len} bytes, more than the {limit} allowed")]
    OutputTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

/// A validated module, ready to run tasks.
#[derive(Clone)]
pub struct Module {
    engine: Engine,
    module: wasmi::Module,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module").finish_non_exhaustive()
    }
}

impl Module {
    /// Validates `wasm` (binary) and checks it imports nothing.
    pub fn new(wasm: &[u8]) -> Result<Module, TaskError> {
        let mut config = Config::default();
        config.consume_fuel(true);
        let engine = Engine::new(&config);
        let module = wasmi::Module::new(&engine, wasm).map_err(|e| TaskError::Invalid(e.to_string()))?;
        if let Some(i) = module.imports().next() {
            return Err(TaskError::Import { module: i.module().to_owned(), name: i.name().to_owned() });
        }
        check_abi(&module)?;
        Ok(Module { engine, module })
    }

    /// Runs one task on `input` in a fresh instance: its output, or why it failed.
    pub fn run(&self, input: &[u8], limits: &Limits) -> Result<Vec<u8>, TaskError> {
        let store_limits = StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .memories(1)
            .instances(1)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(&self.engine, store_limits);
        store.limiter(|l: &mut StoreLimits| l);
        store.set_fuel(limits.fuel).map_err(|e| TaskError::Trap(e.to_string()))?;
        let fail = |e: wasmi::Error| classify(e, limits);
        let instance = Linker::<StoreLimits>::new(&self.engine)
            .instantiate_and_start(&mut store, &self.module)
            .map_err(fail)?;
        let memory = instance.get_memory(&store, "memory").ok_or(TaskError::MissingExport("memory"))?;
        let alloc = instance
            .get_typed_func::<i32, i32>(&store, "alloc")
            .map_err(|_| TaskError::MissingExport("alloc(i32) -> i32"))?;
        let run = instance
            .get_typed_func::<(i32, i32), i64>(&store, "run")
            .map_err(|_| TaskError::MissingExport("run(i32, i32) -> i64"))?;
        let len = i32::try_from(input.len()).map_err(|_| TaskError::OutOfMemory(limits.memory_bytes))?;
        let ptr = alloc.call(&mut store, len).map_err(fail)?;
        let start = u64::from(ptr as u32);
        let in_bounds = |what, start: u64, len: u64, store: &Store<StoreLimits>| {
            let size = memory.data_size(store);
            let end = start + len;
            if end > size as u64 { Err(TaskError::OutOfBounds { what, start, end, size }) } else { Ok(()) }
        };
        in_bounds("alloc", start, input.len() as u64, &store)?;
        memory.write(&mut store, start as usize, input).map_err(|e| TaskError::Trap(e.to_string()))?;
        let result = run.call(&mut store, (ptr, len)).map_err(fail)?;
        let (out_ptr, out_len) = ((result as u64) >> 32, (result as u64) & 0xffff_ffff);
        if out_len as usize > limits.output_bytes {
            return Err(TaskError::OutputTooLarge { len: out_len as usize, limit: limits.output_bytes });
        }
        in_bounds("run", out_ptr, out_len, &store)?;
        let mut out = vec![0; out_len as usize];
        memory.read(&store, out_ptr as usize, &mut out).map_err(|e| TaskError::Trap(e.to_string()))?;
        Ok(out)
    }
}

/// The ABI's exports, with their types: a module without them is refused before any task runs.
fn check_abi(module: &wasmi::Module) -> Result<(), TaskError> {
    use wasmi::{ExternType, ValType};
    let export = |name: &str| module.exports().find(|e| e.name() == name).map(|e| e.ty().clone());
    if !matches!(export("memory"), Some(ExternType::Memory(_))) {
        return Err(TaskError::MissingExport("memory"));
    }
    let func = |name: &str, params: &[ValType], results: &[ValType]| match export(name) {
        Some(ExternType::Func(f)) => f.params() == params && f.results() == results,
        _ => false,
    };
    if !func("alloc", &[ValType::I32], &[ValType::I32]) {
        return Err(TaskError::MissingExport("alloc(i32) -> i32"));
    }
    if !func("run", &[ValType::I32, ValType::I32], &[ValType::I64]) {
        return Err(TaskError::MissingExport("run(i32, i32) -> i64"));
    }
    Ok(())
}

/// A wasmi error as the task's error.
fn classify(e: wasmi::Error, limits: &Limits) -> TaskError {
    match e.as_trap_code() {
        Some(TrapCode::OutOfFuel) => return TaskError::OutOfFuel(limits.fuel),
        // The limiter refused a `memory.grow` (trap_on_grow_failure).
        Some(TrapCode::GrowthOperationLimited) => return TaskError::OutOfMemory(limits.memory_bytes),
        _ => {}
    }
    match e.kind() {
        ErrorKind::Memory(MemoryError::OutOfBoundsGrowth | MemoryError::ResourceLimiterDeniedAllocation)
        | ErrorKind::Instantiation(InstantiationError::FailedToInstantiateMemory(
            MemoryError::OutOfBoundsGrowth | MemoryError::ResourceLimiterDeniedAllocation,
        )) => TaskError::OutOfMemory(limits.memory_bytes),
        ErrorKind::Fuel(_) => TaskError::OutOfFuel(limits.fuel),
        _ => TaskError::Trap(e.to_string()),
    }
}
