#[global_allocator]
static GLOBAL: qatlab_runner::alloc::MiMalloc = qatlab_runner::alloc::MiMalloc;
use qatlab_core::config::*;
use qatlab_runner::{data::RunData, train::*};
struct P;
impl Observer for P {
    fn on_epoch(&mut self, m: &EpochMetrics) {
        println!(
            "{} loss {:.4} acc {:.4} test {:.4} sps {:.0} pos {:.3} {:?}",
            m.epoch,
            m.train_loss,
            m.train_acc,
            m.test_acc,
            m.samples_per_s,
            m.positive_fraction,
            m.layers
                .iter()
                .map(|l| (l.scale, l.sparsity))
                .collect::<Vec<_>>()
        );
    }
}
fn main() {
    if std::env::var_os("NOPURGE").is_some() {
        qatlab_runner::alloc::keep_freed_pages();
    }
    let mut c: RunConfig = serde_yaml::from_str("name: x\nquantizer: ternary\n").unwrap();
    c.train.epochs = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(2);
    let t = std::time::Instant::now();
    let data = RunData::load(&c.data).unwrap();
    println!("load {:?}", t.elapsed());
    let reg = qatlab_plugins::builtin_registry();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| train(&c, &reg, &data, &mut P).unwrap());
    println!("total {:?}", t.elapsed());
}
