//! The Tokio runtime, sized to the CPU the process may use.
//!
//! [`std::thread::available_parallelism`] counts the CPUs the process may run on and,
//! on Linux, honours a cgroup CPU quota (v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`,
//! v2 `cpu.max`), rounded down and at least 1: a pod limited to 50 millicores gets 1,
//! not the node's core count. With one CPU (or less) a current-thread runtime does all
//! the work on the main thread, so no request pays for waking a worker thread and
//! handing it the connection; with more, a multi-thread runtime has one worker each.
//! `TOKIO_WORKER_THREADS`, when set, still picks the number of workers, as with `#[tokio::main]`.

use std::{future::Future, io, num::NonZeroUsize};

use tokio::runtime::{Builder, Runtime};

/// Which runtime to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Everything on the calling thread.
    CurrentThread,
    /// Worker threads; `None` lets Tokio read `TOKIO_WORKER_THREADS`.
    MultiThread(Option<NonZeroUsize>),
}

/// The flavour for `cpus` usable CPUs, given whether `TOKIO_WORKER_THREADS` is set.
pub fn flavor(cpus: NonZeroUsize, worker_threads_set: bool) -> Flavor {
    if worker_threads_set {
        Flavor::MultiThread(None)
    } else if cpus.get() == 1 {
        Flavor::CurrentThread
    } else {
        Flavor::MultiThread(Some(cpus))
    }
}

/// The runtime for this process: see the module documentation.
pub fn build() -> io::Result<Runtime> {
    let cpus = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    let worker_threads_set = std::env::var_os("TOKIO_WORKER_THREADS").is_some();
    let mut builder = match flavor(cpus, worker_threads_set) {
        Flavor::CurrentThread => Builder::new_current_thread(),
        Flavor::MultiThread(workers) => {
            let mut builder = Builder::new_multi_thread();
            if let Some(workers) = workers {
                builder.worker_threads(workers.get());
            }
            builder
        }
    };
    builder.enable_all().build()
}

/// Runs `main` to completion on [`build`]'s runtime; `failed` is returned when there is none.
pub fn block_on<T>(main: impl Future<Output = T>, failed: impl FnOnce(io::Error) -> T) -> T {
    match build() {
        Ok(runtime) => runtime.block_on(main),
        Err(err) => failed(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[test]
    fn one_cpu_or_a_quota_under_one_runs_everything_on_one_thread() {
        assert_eq!(flavor(cpus(1), false), Flavor::CurrentThread);
    }

    #[test]
    fn more_cpus_get_one_worker_each() {
        assert_eq!(flavor(cpus(2), false), Flavor::MultiThread(Some(cpus(2))));
        assert_eq!(flavor(cpus(16), false), Flavor::MultiThread(Some(cpus(16))));
    }

    #[test]
    fn tokio_worker_threads_wins_when_set() {
        assert_eq!(flavor(cpus(1), true), Flavor::MultiThread(None));
        assert_eq!(flavor(cpus(8), true), Flavor::MultiThread(None));
    }

    #[test]
    fn the_runtime_builds_and_runs_a_future() {
        assert_eq!(block_on(async { 42 }, |_| 0), 42);
    }
}
