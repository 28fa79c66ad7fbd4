//! sluice's object-store I/O runtime, and waiting on it from synchronous code.

use std::future::Future;
use std::sync::OnceLock;

/// Runs a blocking call (a Delta kernel call, which waits on its own I/O) from any thread:
/// on a multi-threaded Tokio runtime, its other tasks move to another worker meanwhile.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    let in_worker = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if in_worker {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// sluice's object-store runtime (two threads, started on first use, never dropped);
/// `None` if its threads could not be started.
pub fn io_runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("sluice-storage")
                .enable_all()
                .build()
                .ok()
        })
        .as_ref()
}

/// Runs `future` on sluice's object-store runtime and waits for its output. Callable from
/// any thread (the caller's thread blocks, as it would on a file write).
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match io_runtime() {
        Some(runtime) => {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            runtime.spawn(async move {
                let _ = tx.send(future.await);
            });
            // On a multi-threaded Tokio runtime, let its other tasks move to another
            // worker while this one waits.
            let in_worker = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            let received = if in_worker {
                tokio::task::block_in_place(|| rx.recv())
            } else {
                rx.recv()
            };
            match received {
                Ok(output) => output,
                // The task panicked: surface it here, where the caller waits.
                Err(_) => panic!("an object-store task panicked"),
            }
        }
        // No threads could be started for it: run on a current-thread runtime here.
        None => std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map(|rt| rt.block_on(future))
                })
                .join()
        })
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("no runtime for object-store calls could be started")),
    }
}
