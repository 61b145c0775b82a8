//! Loading dynamic plugin libraries (libloading) and adapting their C ABI back to the strategy
//! traits, so a plugin strategy is registered and used exactly like a built-in one.
//!
//! A library is checked before anything runs: that it loads, that it exports the entry symbol,
//! that its ABI version and table size match, that its registration succeeded and that none of
//! its names clash with a registered one; each failure names the file. Libraries are never
//! unloaded (their code must outlive every strategy built from them).

#![allow(unsafe_code)] // the host side of the plugin boundary; each unsafe block says why it holds

use std::path::{Path, PathBuf};

use qatlab_core::abi::{self, CtxC, ErrBuf, F32s, Handle, PluginTable, ProgressC, QuantView, Str};
use qatlab_core::{
    Activation, Distiller, Kind, PluginError, PluginInfo, Progress, QuantCtx, Quantized, Quantizer, Registry,
    Schedule, Shape,
};
use serde_yaml::Mapping;

use crate::error::{Error, Result};

/// Environment variable with extra plugin libraries (separated like `PATH`).
pub const PLUGIN_PATH_VAR: &str = "QAT_PLUGIN_PATH";

/// A loaded library and the strategies it registered.
pub type Loaded = (PathBuf, Vec<(Kind, PluginInfo)>);

/// Load every library in `paths` into `registry`; returns what each provides.
pub fn load_all(registry: &mut Registry, paths: &[PathBuf]) -> Result<Vec<Loaded>> {
    paths.iter().map(|p| load(registry, p).map(|infos| (p.clone(), infos))).collect()
}

/// Library paths from `$QAT_PLUGIN_PATH`.
pub fn env_paths() -> Vec<PathBuf> {
    std::env::var_os(PLUGIN_PATH_VAR)
        .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
        .unwrap_or_default()
}

fn err(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Config(format!("plugin {}: {message}", path.display()))
}

/// Load one library and register its strategies.
pub fn load(registry: &mut Registry, path: &Path) -> Result<Vec<(Kind, PluginInfo)>> {
    if !path.is_file() {
        return Err(err(path, "no such file; give the path of the built library (lib<name>.so)"));
    }
    // an absolute path, so the loader opens this file and never searches the library path
    let absolute = path.canonicalize().map_err(|e| err(path, e))?;
    // SAFETY: loading a library runs its initialisers; that is the contract of a plugin, and
    // the file is one the user named explicitly (nothing is loaded implicitly).
    let library = unsafe { libloading::Library::new(&absolute) }
        .map_err(|e| err(path, format!("not a loadable library: {e}")))?;
    // SAFETY: the symbol's type is fixed by the ABI; a library that exports it with another
    // type is not a qatlab plugin and is refused by the version check below at the latest.
    let entry = unsafe { library.get::<extern "C" fn() -> *const PluginTable>(abi::ENTRY_SYMBOL) }.map_err(|_| {
        err(path, "no `qatlab_plugin_entry` symbol: is this a qatlab plugin? (add `qatlab_core::export_plugin!(register);`)")
    })?;
    let table_ptr = entry();
    // SAFETY: a plugin returns a pointer to a table it keeps for the life of the library,
    // which is never unloaded.
    let table: &'static PluginTable =
        unsafe { table_ptr.as_ref() }.ok_or_else(|| err(path, "the entry returned no table"))?;
    if table.abi_version != abi::ABI_VERSION {
        return Err(err(
            path,
            format!(
                "built against plugin ABI version {}, this qat speaks version {}; rebuild it against qatlab-core {}",
                table.abi_version,
                abi::ABI_VERSION,
                env!("CARGO_PKG_VERSION")
            ),
        ));
    }
    if (table.size as usize) < std::mem::size_of::<PluginTable>() {
        return Err(err(
            path,
            format!(
                "plugin table of {} bytes, expected at least {}",
                table.size,
                std::mem::size_of::<PluginTable>()
            ),
        ));
    }
    // SAFETY: strings in the table point into the library's own static data.
    let registration_error = unsafe { table.error.as_str() };
    if !registration_error.is_empty() {
        return Err(err(path, format!("registration failed: {registration_error}")));
    }
    std::mem::forget(library); // never unloaded: strategies built from it hold its code
                               // SAFETY: `entries` points at `entry_count` entries the library keeps alive.
    let entries = unsafe { std::slice::from_raw_parts(table.entries, table.entry_count) };
    let source = path.display().to_string();
    let mut provided = Vec::new();
    for (index, e) in entries.iter().enumerate() {
        let kind =
            abi::kind_of(e.kind).ok_or_else(|| err(path, format!("unknown strategy kind {}", e.kind)))?;
        // SAFETY: as above, static strings of the library.
        let (name, summary, defaults) = unsafe { (e.name.as_str(), e.summary.as_str(), e.defaults.as_str()) };
        let defaults: Mapping = serde_yaml::from_str(defaults).unwrap_or_default();
        let info = PluginInfo {
            name: name.to_string(),
            summary: summary.to_string(),
            defaults,
            source: source.clone(),
        };
        let clash = |e: PluginError| err(path, e);
        match kind {
            Kind::Quantizer => registry.quantizers.insert(
                info.clone(),
                Box::new(move |p| Ok(Box::new(DynQuantizer::new(table, index, p)?) as Box<dyn Quantizer>)),
            ),
            Kind::Activation => registry.activations.insert(
                info.clone(),
                Box::new(move |p| {
                    Ok(Box::new(DynActivation(Object::create(table, index, 1, p)?)) as Box<dyn Activation>)
                }),
            ),
            Kind::Schedule => registry.schedules.insert(
                info.clone(),
                Box::new(move |p| {
                    Ok(Box::new(DynSchedule(Object::create(table, index, 2, p)?)) as Box<dyn Schedule>)
                }),
            ),
            Kind::Distiller => registry.distillers.insert(
                info.clone(),
                Box::new(move |p| {
                    Ok(Box::new(DynDistiller(Object::create(table, index, 3, p)?)) as Box<dyn Distiller>)
                }),
            ),
        }
        .map_err(clash)?;
        provided.push((kind, info));
    }
    Ok(provided)
}

/// A host-owned error buffer for one call.
struct Errors {
    bytes: Vec<u8>,
    buf: ErrBuf,
}

impl Errors {
    fn new() -> Box<Self> {
        let mut e = Box::new(Self {
            bytes: vec![0; 2048],
            buf: ErrBuf { ptr: std::ptr::null_mut(), cap: 0, len: 0 },
        });
        e.buf = ErrBuf { ptr: e.bytes.as_mut_ptr(), cap: e.bytes.len(), len: 0 };
        e
    }

    fn ptr(&mut self) -> *mut ErrBuf {
        &mut self.buf
    }

    /// `Ok` for [`abi::OK`], else the plugin's message.
    fn check(&self, code: i32) -> std::result::Result<(), String> {
        if code == abi::OK {
            return Ok(());
        }
        let message = String::from_utf8_lossy(&self.bytes[..self.buf.len]).into_owned();
        Err(if message.is_empty() { format!("plugin call failed with status {code}") } else { message })
    }
}

/// A strategy object living in a plugin, destroyed with its owner.
struct Object {
    table: &'static PluginTable,
    handle: Handle,
    kind: u32,
}

// SAFETY: the plugin object is a `Box<dyn Strategy>` whose traits require `Send` (and `Sync`
// for activations, schedules and distillers, which are only called through `&self`).
unsafe impl Send for Object {}
// SAFETY: see above.
unsafe impl Sync for Object {}

impl Object {
    fn create(
        table: &'static PluginTable,
        index: usize,
        kind: u32,
        params: &Mapping,
    ) -> qatlab_core::Result<Self> {
        let yaml =
            if params.is_empty() { String::new() } else { serde_yaml::to_string(params).unwrap_or_default() };
        let mut handle: Handle = std::ptr::null_mut();
        let mut e = Errors::new();
        let code = (table.create)(index, Str::of(&yaml), &mut handle, e.ptr());
        e.check(code).map_err(PluginError::Invalid)?;
        Ok(Self { table, handle, kind })
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        (self.table.destroy)(self.kind, self.handle);
    }
}

fn f32s(v: &[f32]) -> F32s {
    F32s { ptr: v.as_ptr(), len: v.len() }
}

/// Copy a plugin-owned slice.
fn copied(s: F32s) -> Vec<f32> {
    if s.len == 0 || s.ptr.is_null() {
        return Vec::new();
    }
    // SAFETY: the plugin returns a view valid until the next call on the same handle.
    unsafe { std::slice::from_raw_parts(s.ptr, s.len) }.to_vec()
}

/// A plugin failure where the trait has no error channel: panic with the plugin's message; the
/// runner catches it per run and marks the run failed.
fn or_fail(result: std::result::Result<(), String>) {
    if let Err(message) = result {
        panic!("{message}");
    }
}

/// A plugin quantizer. The learnable parameters are mirrored on the host so `params_mut` can
/// hand out a slice; they are pushed to the plugin before every call that reads them.
struct DynQuantizer {
    object: Object,
    params: Vec<f32>,
}

impl DynQuantizer {
    fn new(table: &'static PluginTable, index: usize, params: &Mapping) -> qatlab_core::Result<Self> {
        let object = Object::create(table, index, 0, params)?;
        let params = copied((table.quantizer.params)(object.handle));
        Ok(Self { object, params })
    }

    fn fns(&self) -> &'static abi::QuantizerFns {
        &self.object.table.quantizer
    }

    fn push_params(&self) -> std::result::Result<(), String> {
        let mut e = Errors::new();
        let code = (self.fns().set_params)(self.object.handle, f32s(&self.params), e.ptr());
        e.check(code)
    }

    fn pull_params(&mut self) {
        self.params = copied((self.fns().params)(self.object.handle));
    }
}

impl Quantizer for DynQuantizer {
    fn quantize(
        &mut self,
        w: &[f32],
        shape: Shape,
        ctx: QuantCtx,
        out: &mut Quantized,
    ) -> qatlab_core::Result<()> {
        self.push_params().map_err(PluginError::Invalid)?;
        let c =
            CtxC { training: ctx.training as u8, step: ctx.step, epoch: ctx.epoch as u64, seed: ctx.seed };
        let mut view = QuantView {
            values: F32s { ptr: std::ptr::null(), len: 0 },
            codes: std::ptr::null(),
            codes_len: 0,
            scales: F32s { ptr: std::ptr::null(), len: 0 },
            levels: F32s { ptr: std::ptr::null(), len: 0 },
        };
        let mut e = Errors::new();
        let code =
            (self.fns().quantize)(self.object.handle, f32s(w), shape.rows, shape.cols, c, &mut view, e.ptr());
        e.check(code).map_err(PluginError::Invalid)?;
        out.values = copied(view.values);
        out.scales = copied(view.scales);
        out.levels = copied(view.levels);
        out.codes = if view.codes_len == 0 || view.codes.is_null() {
            Vec::new()
        } else {
            // SAFETY: as in `copied`, a plugin view valid until the next call.
            unsafe { std::slice::from_raw_parts(view.codes, view.codes_len) }.to_vec()
        };
        if out.values.len() != w.len() {
            return Err(PluginError::Invalid(format!(
                "returned {} values for {} weights",
                out.values.len(),
                w.len()
            )));
        }
        self.pull_params();
        Ok(())
    }

    fn bits_per_weight(&self) -> f64 {
        (self.fns().bits)(self.object.handle)
    }

    fn backward(
        &self,
        w: &[f32],
        shape: Shape,
        q: &Quantized,
        grad: &[f32],
        grad_w: &mut [f32],
        grad_params: &mut [f32],
    ) {
        or_fail(self.push_params());
        let view = abi::view_of(q);
        let mut e = Errors::new();
        let code = (self.fns().backward)(
            self.object.handle,
            f32s(w),
            shape.rows,
            shape.cols,
            &view,
            f32s(grad),
            grad_w.as_mut_ptr(),
            grad_params.as_mut_ptr(),
            grad_params.len(),
            e.ptr(),
        );
        or_fail(e.check(code));
    }

    fn params(&self) -> &[f32] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut [f32] {
        &mut self.params
    }

    fn end_epoch(&mut self, w: &[f32], shape: Shape, epoch: usize) -> qatlab_core::Result<()> {
        self.push_params().map_err(PluginError::Invalid)?;
        let mut e = Errors::new();
        let code = (self.fns().end_epoch)(
            self.object.handle,
            f32s(w),
            shape.rows,
            shape.cols,
            epoch as u64,
            e.ptr(),
        );
        e.check(code).map_err(PluginError::Invalid)?;
        self.pull_params();
        Ok(())
    }

    fn regularizer(&self, shape: Shape, grad_params: &mut [f32]) -> f32 {
        let mut value = 0.0;
        let mut e = Errors::new();
        let code = (self.fns().regularizer)(
            self.object.handle,
            shape.rows,
            shape.cols,
            grad_params.as_mut_ptr(),
            grad_params.len(),
            &mut value,
            e.ptr(),
        );
        or_fail(e.check(code));
        value
    }

    fn pruned_channels(&self, shape: Shape) -> usize {
        (self.fns().pruned)(self.object.handle, shape.rows, shape.cols)
    }

    fn surrogate(
        &self,
        w: &[f32],
        shape: Shape,
        frozen: &Quantized,
        out: &mut [f32],
    ) -> qatlab_core::Result<()> {
        self.push_params().map_err(PluginError::Invalid)?;
        let view = abi::view_of(frozen);
        let mut e = Errors::new();
        let code = (self.fns().surrogate)(
            self.object.handle,
            f32s(w),
            shape.rows,
            shape.cols,
            &view,
            out.as_mut_ptr(),
            e.ptr(),
        );
        e.check(code).map_err(PluginError::Invalid)
    }

    fn param_grad_scale(&self, shape: Shape) -> f32 {
        (self.fns().grad_scale)(self.object.handle, shape.rows, shape.cols)
    }

    fn state(&self) -> Vec<f32> {
        let _ = self.push_params();
        copied((self.fns().state)(self.object.handle))
    }

    fn load_state(&mut self, state: &[f32]) -> qatlab_core::Result<()> {
        let mut e = Errors::new();
        let code = (self.fns().load_state)(self.object.handle, f32s(state), e.ptr());
        e.check(code).map_err(PluginError::Invalid)?;
        self.pull_params();
        Ok(())
    }
}

struct DynActivation(Object);

impl Activation for DynActivation {
    fn apply(&self, x: &[f32], y: &mut [f32], dy: &mut [f32]) {
        let mut e = Errors::new();
        let code = (self.0.table.activation.apply)(
            self.0.handle,
            x.as_ptr(),
            y.as_mut_ptr(),
            dy.as_mut_ptr(),
            x.len().min(y.len()).min(dy.len()),
            e.ptr(),
        );
        or_fail(e.check(code));
    }

    fn is_relu(&self) -> bool {
        (self.0.table.activation.is_relu)(self.0.handle) != 0
    }
}

struct DynSchedule(Object);

impl Schedule for DynSchedule {
    fn value(&self, p: Progress) -> f64 {
        let c = ProgressC {
            epoch: p.epoch as u64,
            step: p.step as u64,
            epochs: p.epochs as u64,
            steps: p.steps as u64,
        };
        let mut out = 0.0;
        let mut e = Errors::new();
        let code = (self.0.table.schedule.value)(self.0.handle, c, &mut out, e.ptr());
        or_fail(e.check(code));
        out
    }
}

struct DynDistiller(Object);

impl Distiller for DynDistiller {
    fn loss(&self, student: &[f32], teacher: &[f32], labels: &[u8], classes: usize, grad: &mut [f32]) -> f32 {
        let mut out = 0.0;
        let mut e = Errors::new();
        let code = (self.0.table.distiller.loss)(
            self.0.handle,
            student.as_ptr(),
            teacher.as_ptr(),
            labels.as_ptr(),
            labels.len(),
            classes,
            grad.as_mut_ptr(),
            &mut out,
            e.ptr(),
        );
        or_fail(e.check(code));
        out
    }
}
