//! Helpers the benchmark and evaluation programs share: child processes that die with the
//! program, free ports, percentiles, and random unit vectors without another dependency.

#![allow(dead_code, reason = "each program uses part of it")]

use std::process::Child;

/// A child process, killed and reaped when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `p`th percentile (nearest rank) of `values`; NaN when there are none.
pub fn pct(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A small xorshift generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }

    /// A random vector of length 1.
    pub fn unit_vector(&mut self, dimension: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dimension).map(|_| self.next()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}

/// A benchmark's `main`: `PROGRAM upstream PORT` is the fake upstream process it starts as a
/// child, anything else the orchestrator, each on a multi-threaded runtime.
pub fn bench_main<U, O>(upstream: impl FnOnce(u16) -> U, orchestrate: impl FnOnce() -> O)
where
    U: std::future::Future<Output = ()>,
    O: std::future::Future<Output = ()>,
{
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if args.get(1).map(String::as_str) == Some("upstream") {
        let port: u16 = args[2].parse().unwrap();
        runtime.block_on(upstream(port));
    } else {
        runtime.block_on(orchestrate());
    }
}

/// Serves `app` on 127.0.0.1:`port` with Nagle off (small writes are the point), until killed.
pub async fn serve_on(port: u16, app: axum::Router) {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap()
        .tap_io(|s| {
            let _ = s.set_nodelay(true);
        });
    axum::serve(listener, app).await.unwrap();
}
