//! Compiles this project's own ext_authz wire definitions (`proto/`) with a vendored protoc, so a
//! build needs no system protoc.

fn main() -> anyhow::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: the build script is single-threaded here; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `google.protobuf.Struct` is our own trimmed copy (proto/google/protobuf), not
        // prost-types'; a B-tree for its handful of keys is cheaper to fill than a hash map.
        .compile_well_known_types(true)
        .btree_map(".google.protobuf.Struct.fields")
        .compile_protos(
            &["proto/envoy/service/auth/v3/external_auth.proto"],
            &["proto"],
        )?;
    Ok(())
}
