//! Config parsing and validation: any text gives a config or errors, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = switchyard::config::parse(text, "fuzz.toml") {
            // Rendering the diagnostics (positions, field paths) must not panic either.
            let _ = e.to_string();
        }
    }
});
