//! The C ABI of dynamic plugins (version [`ABI_VERSION`]).
//!
//! A plugin is a `cdylib` whose author writes an ordinary registration function against the
//! same [`Registry`] the built-ins use, plus one line: `qatlab_core::export_plugin!(register);`.
//! That exports [`ENTRY_SYMBOL`], returning a [`PluginTable`]: a `#[repr(C)]` table that starts
//! with `abi_version` and `size` (the host checks both first; later versions only append
//! fields), lists the strategies, and holds one table of `extern "C"` functions per strategy kind.
//!
//! Only flat data crosses the boundary: pointer + length slices, parameters as YAML text, errors
//! as a status code plus a message written into a host-owned buffer. Strategy objects stay on the
//! plugin side behind opaque handles. Every exported function runs inside `catch_unwind`, so a
//! panicking plugin returns [`PANIC`] with its message instead of unwinding into the host.
//! Buffers a plugin returns (quantizer outputs, parameters) belong to the plugin and stay valid
//! until the next call on the same handle; the host copies them.

#![allow(unsafe_code)] // the boundary itself: every unsafe block states why it holds

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use crate::{
    Activation, Distiller, Kind, PluginInfo, Progress, QuantCtx, Quantized, Quantizer, Registry, Schedule,
    Shape,
};

/// Version of this ABI; a plugin built against another version is refused with a clear error.
pub const ABI_VERSION: u32 = 1;
/// Name of the exported entry point (NUL-terminated for the loader).
pub const ENTRY_SYMBOL: &[u8] = b"qatlab_plugin_entry\0";

/// Success.
pub const OK: i32 = 0;
/// The strategy returned an error; the message is in the error buffer.
pub const ERROR: i32 = 1;
/// The strategy panicked; the panic message is in the error buffer.
pub const PANIC: i32 = 2;

/// Borrowed UTF-8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Str {
    /// First byte.
    pub ptr: *const u8,
    /// Byte count.
    pub len: usize,
}

impl Str {
    /// View of a string that outlives the call.
    pub fn of(s: &str) -> Self {
        Self { ptr: s.as_ptr(), len: s.len() }
    }

    /// The text.
    ///
    /// # Safety
    /// `ptr` must point to `len` bytes of UTF-8 that live for `'a`.
    pub unsafe fn as_str<'a>(&self) -> &'a str {
        if self.len == 0 {
            return "";
        }
        // SAFETY: guaranteed by the caller (both sides only build `Str` from `&str`).
        unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(self.ptr, self.len)) }
    }
}

/// A host-owned buffer the plugin writes an error message into (truncated to `cap`).
#[repr(C)]
#[derive(Debug)]
pub struct ErrBuf {
    /// Start of the buffer.
    pub ptr: *mut u8,
    /// Capacity in bytes.
    pub cap: usize,
    /// Bytes written.
    pub len: usize,
}

impl ErrBuf {
    fn write(&mut self, message: &str) {
        let mut n = message.len().min(self.cap);
        while !message.is_char_boundary(n) {
            n -= 1;
        }
        // SAFETY: the host passes a buffer of `cap` writable bytes.
        unsafe { std::ptr::copy_nonoverlapping(message.as_ptr(), self.ptr, n) };
        self.len = n;
    }
}

/// Borrowed f32 values.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct F32s {
    /// First value.
    pub ptr: *const f32,
    /// Count.
    pub len: usize,
}

/// A [`Quantized`] as pointers (into whichever side owns it).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct QuantView {
    /// Fake-quantized values.
    pub values: F32s,
    /// Level codes (as bytes).
    pub codes: *const u8,
    /// Number of codes (0 for float).
    pub codes_len: usize,
    /// Scales.
    pub scales: F32s,
    /// Levels.
    pub levels: F32s,
}

/// [`QuantCtx`] across the boundary.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CtxC {
    /// Training pass.
    pub training: u8,
    /// Step.
    pub step: u64,
    /// Epoch.
    pub epoch: u64,
    /// Seed.
    pub seed: u64,
}

/// [`Progress`] across the boundary.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProgressC {
    /// Epoch.
    pub epoch: u64,
    /// Step.
    pub step: u64,
    /// Total epochs.
    pub epochs: u64,
    /// Total steps.
    pub steps: u64,
}

/// Opaque strategy handle.
pub type Handle = *mut c_void;

/// One registered strategy.
#[repr(C)]
pub struct Entry {
    /// [`Kind`] as 0 quantizer, 1 activation, 2 schedule, 3 distiller.
    pub kind: u32,
    /// Registered name.
    pub name: Str,
    /// One-line definition.
    pub summary: Str,
    /// Default parameters as a YAML mapping.
    pub defaults: Str,
}

// SAFETY: entries are immutable after the table is built and point only at strings that live
// as long as the library.
unsafe impl Sync for Entry {}
// SAFETY: as above.
unsafe impl Send for Entry {}

/// Functions of quantizer handles.
#[repr(C)]
pub struct QuantizerFns {
    /// Forward pass; `out` receives views into plugin memory.
    pub quantize: extern "C" fn(Handle, F32s, usize, usize, CtxC, *mut QuantView, *mut ErrBuf) -> i32,
    /// Bits per weight.
    pub bits: extern "C" fn(Handle) -> f64,
    /// Backward pass: (w, rows, cols, q, grad_values, grad_w out, grad_params out, n_params, err).
    pub backward: extern "C" fn(
        Handle,
        F32s,
        usize,
        usize,
        *const QuantView,
        F32s,
        *mut f32,
        *mut f32,
        usize,
        *mut ErrBuf,
    ) -> i32,
    /// Current learnable parameters (view into plugin memory).
    pub params: extern "C" fn(Handle) -> F32s,
    /// Overwrite the learnable parameters.
    pub set_params: extern "C" fn(Handle, F32s, *mut ErrBuf) -> i32,
    /// Resumable state, written into a plugin-owned buffer.
    pub state: extern "C" fn(Handle) -> F32s,
    /// Restore state.
    pub load_state: extern "C" fn(Handle, F32s, *mut ErrBuf) -> i32,
    /// End-of-epoch update.
    pub end_epoch: extern "C" fn(Handle, F32s, usize, usize, u64, *mut ErrBuf) -> i32,
    /// Regularizer value; adds its gradient into the buffer.
    pub regularizer: extern "C" fn(Handle, usize, usize, *mut f32, usize, *mut f32, *mut ErrBuf) -> i32,
    /// Pruned channels.
    pub pruned: extern "C" fn(Handle, usize, usize) -> usize,
    /// Surrogate forward into `out`.
    pub surrogate: extern "C" fn(Handle, F32s, usize, usize, *const QuantView, *mut f32, *mut ErrBuf) -> i32,
    /// Parameter gradient scale.
    pub grad_scale: extern "C" fn(Handle, usize, usize) -> f32,
}

/// Functions of activation handles.
#[repr(C)]
pub struct ActivationFns {
    /// f and f′ of `n` values.
    pub apply: extern "C" fn(Handle, *const f32, *mut f32, *mut f32, usize, *mut ErrBuf) -> i32,
    /// 1 when exactly ReLU.
    pub is_relu: extern "C" fn(Handle) -> u8,
}

/// Functions of schedule handles.
#[repr(C)]
pub struct ScheduleFns {
    /// The value at a point of training.
    pub value: extern "C" fn(Handle, ProgressC, *mut f64, *mut ErrBuf) -> i32,
}

/// Functions of distiller handles.
#[repr(C)]
pub struct DistillerFns {
    /// (student, teacher, labels, batch, classes, grad out, loss out, err).
    pub loss: extern "C" fn(
        Handle,
        *const f32,
        *const f32,
        *const u8,
        usize,
        usize,
        *mut f32,
        *mut f32,
        *mut ErrBuf,
    ) -> i32,
}

/// What a plugin library exports. Fields are only ever appended in later ABI versions.
#[repr(C)]
pub struct PluginTable {
    /// [`ABI_VERSION`] of the plugin's build.
    pub abi_version: u32,
    /// `size_of::<PluginTable>()` of the plugin's build.
    pub size: u32,
    /// A registration error, or empty.
    pub error: Str,
    /// Strategies.
    pub entries: *const Entry,
    /// Number of strategies.
    pub entry_count: usize,
    /// Build strategy `index` from YAML parameters into `*out`.
    pub create: extern "C" fn(usize, Str, *mut Handle, *mut ErrBuf) -> i32,
    /// Drop a handle of the given kind.
    pub destroy: extern "C" fn(u32, Handle),
    /// Quantizer functions.
    pub quantizer: QuantizerFns,
    /// Activation functions.
    pub activation: ActivationFns,
    /// Schedule functions.
    pub schedule: ScheduleFns,
    /// Distiller functions.
    pub distiller: DistillerFns,
}

// SAFETY: a table is immutable after it is built and lives for the whole process (libraries
// are never unloaded); its pointers only reach static, immutable data.
unsafe impl Sync for PluginTable {}
// SAFETY: as above.
unsafe impl Send for PluginTable {}

/// Kind code of a [`Kind`].
pub fn kind_code(kind: Kind) -> u32 {
    match kind {
        Kind::Quantizer => 0,
        Kind::Activation => 1,
        Kind::Schedule => 2,
        Kind::Distiller => 3,
    }
}

/// [`Kind`] of a code.
pub fn kind_of(code: u32) -> Option<Kind> {
    [Kind::Quantizer, Kind::Activation, Kind::Schedule, Kind::Distiller].get(code as usize).copied()
}

// ---------------------------------------------------------------- plugin side

/// Export the entry point of a plugin library whose strategies `register` adds to a registry.
/// The only line of glue a plugin author writes.
#[macro_export]
macro_rules! export_plugin {
    ($register:path) => {
        /// Entry point of this qatlab plugin library.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn qatlab_plugin_entry() -> *const $crate::abi::PluginTable {
            $crate::abi::plugin_table($register)
        }
    };
}

/// A plugin's strategies, built once per library.
struct Exported {
    registry: Registry,
    infos: Vec<(Kind, PluginInfo)>,
    /// Keeps the strings the entries point into.
    _text: Vec<String>,
}

static EXPORTED: OnceLock<(Exported, PluginTable, Vec<Entry>)> = OnceLock::new();

/// Build (once) and return the table of the strategies `register` registers.
pub fn plugin_table(register: fn(&mut Registry) -> crate::Result<()>) -> *const PluginTable {
    let (_, table, _) = EXPORTED.get_or_init(|| {
        let mut registry = Registry::default();
        let error = match catch_unwind(AssertUnwindSafe(|| register(&mut registry))) {
            Ok(Ok(())) => String::new(),
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!("registration panicked: {}", panic_message(&panic)),
        };
        let infos: Vec<(Kind, PluginInfo)> = registry
            .listing()
            .into_iter()
            .flat_map(|(k, list)| list.into_iter().map(move |i| (k, i)))
            .collect();
        let mut text: Vec<String> = vec![error];
        for (_, info) in &infos {
            text.push(info.name.clone());
            text.push(info.summary.clone());
            text.push(serde_yaml::to_string(&info.defaults).unwrap_or_default());
        }
        // `text` no longer grows: the entries can point into its strings
        let entries: Vec<Entry> = infos
            .iter()
            .enumerate()
            .map(|(i, (kind, _))| Entry {
                kind: kind_code(*kind),
                name: Str::of(&text[1 + 3 * i]),
                summary: Str::of(&text[2 + 3 * i]),
                defaults: Str::of(&text[3 + 3 * i]),
            })
            .collect();
        let table = PluginTable {
            abi_version: ABI_VERSION,
            size: std::mem::size_of::<PluginTable>() as u32,
            error: Str::of(&text[0]),
            entries: entries.as_ptr(),
            entry_count: entries.len(),
            create,
            destroy,
            quantizer: QuantizerFns {
                quantize: q_quantize,
                bits: q_bits,
                backward: q_backward,
                params: q_params,
                set_params: q_set_params,
                state: q_state,
                load_state: q_load_state,
                end_epoch: q_end_epoch,
                regularizer: q_regularizer,
                pruned: q_pruned,
                surrogate: q_surrogate,
                grad_scale: q_grad_scale,
            },
            activation: ActivationFns { apply: a_apply, is_relu: a_is_relu },
            schedule: ScheduleFns { value: s_value },
            distiller: DistillerFns { loss: d_loss },
        };
        (Exported { registry, infos, _text: text }, table, entries)
    });
    table
}

fn exported() -> &'static Exported {
    &EXPORTED.get().expect("the host reads the table before creating strategies").0
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic without a message".into())
}

/// Run `f` at the boundary: errors and panics become a status and a message.
fn guarded(err: *mut ErrBuf, f: impl FnOnce() -> Result<(), String>) -> i32 {
    let (code, message) = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return OK,
        Ok(Err(m)) => (ERROR, m),
        Err(panic) => (PANIC, format!("plugin panicked: {}", panic_message(&panic))),
    };
    // SAFETY: the host passes a valid, exclusive error buffer with every fallible call.
    if let Some(buf) = unsafe { err.as_mut() } {
        buf.write(&message);
    }
    code
}

/// Plugin-side state behind a handle.
enum Object {
    Quantizer { q: Box<dyn Quantizer>, out: Quantized, state: Vec<f32> },
    Activation(Box<dyn Activation>),
    Schedule(Box<dyn Schedule>),
    Distiller(Box<dyn Distiller>),
}

/// # Safety
/// `p` must be null or point to `len` valid values for the call.
unsafe fn slice<'a, T>(p: *const T, len: usize) -> &'a [T] {
    if len == 0 || p.is_null() {
        &[]
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(p, len) }
    }
}

/// # Safety
/// `p` must be null or point to `len` writable values, not aliased during the call.
unsafe fn slice_mut<'a, T>(p: *mut T, len: usize) -> &'a mut [T] {
    if len == 0 || p.is_null() {
        &mut []
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(p, len) }
    }
}

fn object<'a>(h: Handle) -> &'a mut Object {
    // SAFETY: handles are only made by `create` from a `Box<Object>` and used by one thread at
    // a time (the host wraps each in a value it never shares mutably).
    unsafe { &mut *(h as *mut Object) }
}

fn quantizer<'a>(h: Handle) -> (&'a mut Box<dyn Quantizer>, &'a mut Quantized, &'a mut Vec<f32>) {
    match object(h) {
        Object::Quantizer { q, out, state } => (q, out, state),
        _ => panic!("handle is not a quantizer"),
    }
}

fn view_to_quantized(v: &QuantView) -> Quantized {
    // SAFETY: views are built from live vectors by the caller for the duration of the call.
    unsafe {
        Quantized {
            values: slice(v.values.ptr, v.values.len).to_vec(),
            codes: slice(v.codes, v.codes_len).to_vec(),
            scales: slice(v.scales.ptr, v.scales.len).to_vec(),
            levels: slice(v.levels.ptr, v.levels.len).to_vec(),
        }
    }
}

/// Views into a [`Quantized`] (valid while it lives unchanged).
pub fn view_of(q: &Quantized) -> QuantView {
    QuantView {
        values: F32s { ptr: q.values.as_ptr(), len: q.values.len() },
        codes: q.codes.as_ptr(),
        codes_len: q.codes.len(),
        scales: F32s { ptr: q.scales.as_ptr(), len: q.scales.len() },
        levels: F32s { ptr: q.levels.as_ptr(), len: q.levels.len() },
    }
}

extern "C" fn create(index: usize, params: Str, out: *mut Handle, err: *mut ErrBuf) -> i32 {
    guarded(err, || {
        let e = exported();
        let (kind, info) = e.infos.get(index).ok_or("no such strategy")?;
        // SAFETY: the host passes YAML text it keeps alive for the call.
        let text = unsafe { params.as_str() };
        let mapping: serde_yaml::Mapping = if text.trim().is_empty() {
            Default::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| e.to_string())?
        };
        let r = &e.registry;
        let object = match kind {
            Kind::Quantizer => Object::Quantizer {
                q: r.quantizers.build(&info.name, &mapping).map_err(|e| e.to_string())?,
                out: Quantized::default(),
                state: Vec::new(),
            },
            Kind::Activation => {
                Object::Activation(r.activations.build(&info.name, &mapping).map_err(|e| e.to_string())?)
            }
            Kind::Schedule => {
                Object::Schedule(r.schedules.build(&info.name, &mapping).map_err(|e| e.to_string())?)
            }
            Kind::Distiller => {
                Object::Distiller(r.distillers.build(&info.name, &mapping).map_err(|e| e.to_string())?)
            }
        };
        // SAFETY: `out` is a valid place for one handle.
        unsafe { *out = Box::into_raw(Box::new(object)) as Handle };
        Ok(())
    })
}

extern "C" fn destroy(_kind: u32, h: Handle) {
    let _ = catch_unwind(|| {
        if !h.is_null() {
            // SAFETY: `h` came from `create` and the host destroys it once.
            drop(unsafe { Box::from_raw(h as *mut Object) });
        }
    });
}

extern "C" fn q_quantize(
    h: Handle,
    w: F32s,
    rows: usize,
    cols: usize,
    ctx: CtxC,
    out: *mut QuantView,
    err: *mut ErrBuf,
) -> i32 {
    guarded(err, || {
        let (q, last, _) = quantizer(h);
        // SAFETY: the host passes its weight buffer for the call.
        let w = unsafe { slice(w.ptr, w.len) };
        let ctx = QuantCtx {
            training: ctx.training != 0,
            step: ctx.step,
            epoch: ctx.epoch as usize,
            seed: ctx.seed,
        };
        q.quantize(w, Shape::new(rows, cols), ctx, last).map_err(|e| e.to_string())?;
        // SAFETY: `out` is a valid place for one view.
        unsafe { *out = view_of(last) };
        Ok(())
    })
}

extern "C" fn q_bits(h: Handle) -> f64 {
    catch_unwind(AssertUnwindSafe(|| quantizer(h).0.bits_per_weight())).unwrap_or(f64::NAN)
}

extern "C" fn q_backward(
    h: Handle,
    w: F32s,
    rows: usize,
    cols: usize,
    q: *const QuantView,
    grad: F32s,
    grad_w: *mut f32,
    grad_params: *mut f32,
    n_params: usize,
    err: *mut ErrBuf,
) -> i32 {
    guarded(err, || {
        let (quant, _, _) = quantizer(h);
        // SAFETY: the host passes live buffers of the stated lengths for the call.
        let (w, grad, grad_w, grad_params, q) = unsafe {
            (
                slice(w.ptr, w.len),
                slice(grad.ptr, grad.len),
                slice_mut(grad_w, w.len),
                slice_mut(grad_params, n_params),
                view_to_quantized(&*q),
            )
        };
        quant.backward(w, Shape::new(rows, cols), &q, grad, grad_w, grad_params);
        Ok(())
    })
}

extern "C" fn q_params(h: Handle) -> F32s {
    let p = quantizer(h).0.params();
    F32s { ptr: p.as_ptr(), len: p.len() }
}

extern "C" fn q_set_params(h: Handle, values: F32s, err: *mut ErrBuf) -> i32 {
    guarded(err, || {
        let target = quantizer(h).0.params_mut();
        // SAFETY: the host passes a live buffer for the call.
        let values = unsafe { slice(values.ptr, values.len) };
        if target.len() != values.len() {
            return Err(format!("{} parameters given, the quantizer has {}", values.len(), target.len()));
        }
        target.copy_from_slice(values);
        Ok(())
    })
}

extern "C" fn q_state(h: Handle) -> F32s {
    let (q, _, state) = quantizer(h);
    *state = q.state();
    F32s { ptr: state.as_ptr(), len: state.len() }
}

extern "C" fn q_load_state(h: Handle, values: F32s, err: *mut ErrBuf) -> i32 {
    guarded(err, || {
        // SAFETY: the host passes a live buffer for the call.
        let values = unsafe { slice(values.ptr, values.len) };
        quantizer(h).0.load_state(values).map_err(|e| e.to_string())
    })
}

extern "C" fn q_end_epoch(h: Handle, w: F32s, rows: usize, cols: usize, epoch: u64, err: *mut ErrBuf) -> i32 {
    guarded(err, || {
        // SAFETY: the host passes its weight buffer for the call.
        let w = unsafe { slice(w.ptr, w.len) };
        quantizer(h).0.end_epoch(w, Shape::new(rows, cols), epoch as usize).map_err(|e| e.to_string())
    })
}

extern "C" fn q_regularizer(
    h: Handle,
    rows: usize,
    cols: usize,
    grad: *mut f32,
    n: usize,
    out: *mut f32,
    err: *mut ErrBuf,
) -> i32 {
    guarded(err, || {
        // SAFETY: the host passes a live gradient buffer of `n` values and a place for the value.
        unsafe { *out = quantizer(h).0.regularizer(Shape::new(rows, cols), slice_mut(grad, n)) };
        Ok(())
    })
}

extern "C" fn q_pruned(h: Handle, rows: usize, cols: usize) -> usize {
    catch_unwind(AssertUnwindSafe(|| quantizer(h).0.pruned_channels(Shape::new(rows, cols)))).unwrap_or(0)
}

extern "C" fn q_surrogate(
    h: Handle,
    w: F32s,
    rows: usize,
    cols: usize,
    frozen: *const QuantView,
    out: *mut f32,
    err: *mut ErrBuf,
) -> i32 {
    guarded(err, || {
        // SAFETY: the host passes live buffers of the stated lengths for the call.
        let (w, frozen, out) =
            unsafe { (slice(w.ptr, w.len), view_to_quantized(&*frozen), slice_mut(out, w.len)) };
        quantizer(h).0.surrogate(w, Shape::new(rows, cols), &frozen, out).map_err(|e| e.to_string())
    })
}

extern "C" fn q_grad_scale(h: Handle, rows: usize, cols: usize) -> f32 {
    catch_unwind(AssertUnwindSafe(|| quantizer(h).0.param_grad_scale(Shape::new(rows, cols)))).unwrap_or(1.0)
}

extern "C" fn a_apply(
    h: Handle,
    x: *const f32,
    y: *mut f32,
    dy: *mut f32,
    n: usize,
    err: *mut ErrBuf,
) -> i32 {
    guarded(err, || match object(h) {
        Object::Activation(a) => {
            // SAFETY: the host passes three live buffers of `n` values for the call.
            let (x, y, dy) = unsafe { (slice(x, n), slice_mut(y, n), slice_mut(dy, n)) };
            a.apply(x, y, dy);
            Ok(())
        }
        _ => Err("handle is not an activation".into()),
    })
}

extern "C" fn a_is_relu(h: Handle) -> u8 {
    catch_unwind(AssertUnwindSafe(|| matches!(object(h), Object::Activation(a) if a.is_relu()) as u8))
        .unwrap_or(0)
}

extern "C" fn s_value(h: Handle, p: ProgressC, out: *mut f64, err: *mut ErrBuf) -> i32 {
    guarded(err, || match object(h) {
        Object::Schedule(s) => {
            let p = Progress {
                epoch: p.epoch as usize,
                step: p.step as usize,
                epochs: p.epochs as usize,
                steps: p.steps as usize,
            };
            // SAFETY: `out` is a valid place for one value.
            unsafe { *out = s.value(p) };
            Ok(())
        }
        _ => Err("handle is not a schedule".into()),
    })
}

extern "C" fn d_loss(
    h: Handle,
    student: *const f32,
    teacher: *const f32,
    labels: *const u8,
    batch: usize,
    classes: usize,
    grad: *mut f32,
    out: *mut f32,
    err: *mut ErrBuf,
) -> i32 {
    guarded(err, || match object(h) {
        Object::Distiller(d) => {
            let n = batch * classes;
            // SAFETY: the host passes live buffers of the stated lengths for the call.
            unsafe {
                *out = d.loss(
                    slice(student, n),
                    slice(teacher, n),
                    slice(labels, batch),
                    classes,
                    slice_mut(grad, n),
                )
            };
            Ok(())
        }
        _ => Err("handle is not a distiller".into()),
    })
}
