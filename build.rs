//! Fetches the browser libraries the UI embeds (web/package-lock.json pins them) when they
//! are missing or older than the lockfile. Needs npm at build time only; the binary serves
//! the files from memory.

use std::path::Path;
use std::process::Command;

const NEEDED: &[&str] = &[
    "node_modules/uplot/dist/uPlot.iife.min.js",
    "node_modules/uplot/dist/uPlot.min.css",
    "node_modules/gridstack/dist/gridstack-all.js",
    "node_modules/gridstack/dist/gridstack.min.css",
];

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn main() {
    println!("cargo:rerun-if-changed=web/package-lock.json");
    println!("cargo:rerun-if-changed=web/package.json");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let web = Path::new(&manifest).join("web");
    let installed = web.join("node_modules/.package-lock.json");
    let fresh = NEEDED.iter().all(|p| web.join(p).exists())
        && modified(&installed) >= modified(&web.join("package-lock.json"));
    if fresh {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&web)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "`npm ci` in {} failed ({s}): the UI's libraries could not be installed",
            web.display()
        ),
        Err(e) => {
            panic!("running npm failed ({e}): install Node.js and npm to build Pulseboard's UI")
        }
    }
    for p in NEEDED {
        assert!(web.join(p).exists(), "npm ci did not produce {p}");
    }
}
