//! The `factory` binary introduces itself by its own name.

#[test]
fn factory_version_names_the_tool() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_factory"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("factory "), "{text}");
}
