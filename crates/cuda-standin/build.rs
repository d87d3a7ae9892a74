//! The library is installed as `libcuda.so.1` with `libcuda.so` linked to it; giving it that
//! soname makes the dynamic loader treat both names as one library, so a test that opens
//! `libcuda.so.1` (ctypes) and the engine that opens `libcuda.so` (cudarc) share one driver state.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    }
}
