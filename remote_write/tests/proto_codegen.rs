//! The generated protobuf code is committed; this test regenerates it from `proto/remote.proto`
//! with prost-build (using protox, so no system `protoc` is needed) and fails when the committed
//! file differs. Run with `PIE_UPDATE_PROTO=1` to rewrite the committed file.

use std::path::Path;

#[test]
fn generated_code_matches_proto() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let descriptors = protox::compile([root.join("proto/remote.proto")], [root.join("proto")])
        .expect("compile proto/remote.proto");
    let out = tempfile::tempdir().expect("temp dir");
    prost_build::Config::new()
        .out_dir(out.path())
        .compile_fds(descriptors)
        .expect("generate Rust code");
    let generated = std::fs::read_to_string(out.path().join("prometheus.rs")).expect("read output");
    let committed_path = root.join("src/proto/prometheus.rs");
    if std::env::var_os("PIE_UPDATE_PROTO").is_some() {
        std::fs::write(&committed_path, &generated).expect("update committed code");
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "src/proto/prometheus.rs is out of date with proto/remote.proto; \
         regenerate it with `PIE_UPDATE_PROTO=1 cargo test -p pie-remote-write --test proto_codegen`"
    );
}
