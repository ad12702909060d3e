//! The file watcher: watches the folders of the config file and of every certificate and key (not the files,
//! so editors' rename-replace and Kubernetes ConfigMap symlink swaps are seen), debounces bursts of events, and
//! asks the control loop for a reload.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Command, Trigger};

/// The files a watcher looks after, and the folders it watches for them.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Watched {
    pub(crate) folders: BTreeSet<PathBuf>,
    pub(crate) names: BTreeSet<std::ffi::OsString>,
}

/// Watches folders (not files, so editors' rename-replace and Kubernetes ConfigMap symlink swaps are seen),
/// debounces bursts of events, and asks for a reload; the control loop ignores an unchanged config and
/// re-reads the certificates then.
pub(super) fn watch_files(
    watched: &Watched,
    control: mpsc::Sender<Command>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let (events, mut received) = mpsc::channel::<()>(64);
    let names = watched.names.clone();
    let mut watcher = match notify::recommended_watcher(
        move |event: notify::Result<notify::Event>| {
            // Only our files, and Kubernetes' `..data` symlink swaps; other files in the folders do not count.
            let ours = event.is_ok_and(|e| {
                e.paths.iter().any(|p| {
                    p.file_name()
                        .is_some_and(|n| names.contains(n) || n.to_string_lossy().starts_with(".."))
                })
            });
            if ours {
                let _ = events.try_send(());
            }
        },
    ) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or POST /api/reload");
            return None;
        }
    };
    for folder in &watched.folders {
        if let Err(e) = watcher.watch(folder, RecursiveMode::NonRecursive) {
            tracing::warn!(folder = %folder.display(), error = %e, "cannot watch this folder; reload with SIGHUP or POST /api/reload");
        }
    }
    tokio::spawn(async move {
        const QUIET: Duration = Duration::from_millis(150);
        while received.recv().await.is_some() {
            // Debounce: wait until the folder has been quiet for a moment.
            while let Ok(Some(())) = tokio::time::timeout(QUIET, received.recv()).await {}
            let command = Command::Reload {
                trigger: Trigger::FileChange,
                reply: None,
            };
            if control.send(command).await.is_err() {
                return;
            }
        }
    });
    Some(watcher)
}
