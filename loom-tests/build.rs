//! Compiles the shared ring source against loom (`cfg(boundary_loom)`) without RUSTFLAGS.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(boundary_loom)");
    println!("cargo:rustc-cfg=boundary_loom");
}
