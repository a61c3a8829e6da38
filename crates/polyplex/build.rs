//! Release builds of the `polyplex` binary lay out the functions a running
//! gateway executes (listed in `symbol-order.txt`, hottest first) next to
//! each other, so the pages of code it touches are few: the kernel maps a
//! binary's code into a process 64 KiB around each page it runs, and with
//! the compiler's own order those windows covered 8 of the binary's 10 MiB
//! of code in an idle gateway. `scripts/symbol-order.sh` regenerates the
//! list (see docs/performance.md); a name the list has and the binary does
//! not (a function renamed since) is skipped silently.

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-changed=build.rs");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|o| o == "linux");
    let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    let list = std::path::Path::new(&dir).join("symbol-order.txt");
    if release && linux && list.exists() && links_with_lld() {
        println!(
            "cargo:rustc-link-arg-bin=polyplex=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bin=polyplex=-Wl,--no-warn-symbol-ordering");
    }
}

/// rustc links x86_64 Linux binaries with its own LLD since 1.90; the
/// ordering option is LLD's (GNU ld would refuse it), so a build that picks
/// its own linker goes without.
fn links_with_lld() -> bool {
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    let target = std::env::var("TARGET").unwrap_or_default();
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let own_linker = ["linker", "fuse-ld", "link-self-contained"]
        .iter()
        .any(|f| flags.contains(f))
        || std::env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some();
    target == "x86_64-unknown-linux-gnu" && !own_linker
}
