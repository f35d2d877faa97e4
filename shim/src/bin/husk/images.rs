//! `husk pull`, `images`, `rmi`, `inspect`: registry images in the local store (the
//! work is the library's `husk::registry`; this formats it).

use std::process::ExitCode;

use husk::config::Config;
use husk::registry::progress::{human, short};
use husk::registry::{self, PullOptions, Reference};

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("husk: {e}");
    ExitCode::from(125)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn out(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{text}");
}

fn parse(s: &str) -> Result<Reference, ExitCode> {
    Reference::parse(s).map_err(|e| fail(&e))
}

/// `husk pull REF`: the image into the store (blobs already there are kept).
pub fn pull(config: &Config, reference: &str, insecure: &[String], quiet: bool) -> ExitCode {
    let r = match parse(reference) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let Some(rt) = super::runtime() else {
        return ExitCode::from(125);
    };
    let opts = PullOptions {
        insecure: husk::run::insecure_registries(config, insecure),
        quiet,
    };
    let store = registry::Store::new(&config.state_dir);
    let r = rt.block_on(registry::pull::pull(&store, &r, &opts));
    rt.shutdown_background();
    match r {
        Ok(rec) => {
            out(&format!("{}@{}", rec.reference, rec.digest));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `husk images`: a table of what was pulled.
pub fn images(config: &Config) -> ExitCode {
    let list = match registry::images(&config.state_dir) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    out(&format!(
        "{:<50} {:<12} {:>10}  CREATED",
        "REFERENCE", "DIGEST", "SIZE"
    ));
    for s in list {
        out(&format!(
            "{:<50} {:<12} {:>10}  {}",
            s.reference,
            short(&s.digest),
            human(s.size),
            s.created.as_deref().unwrap_or("-")
        ));
    }
    ExitCode::SUCCESS
}

/// `husk rmi REF...`: removes each reference, then blobs nothing else uses.
pub fn rmi(config: &Config, references: &[String]) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    for s in references {
        let r = match parse(s) {
            Ok(r) => r,
            Err(c) => {
                code = c;
                continue;
            }
        };
        match registry::remove(&config.state_dir, &r) {
            Ok(blobs) => {
                out(&format!("Untagged: {r}"));
                for b in blobs {
                    out(&format!("Deleted: {b}"));
                }
            }
            Err(e) => code = fail(&e),
        }
    }
    code
}

/// `husk inspect REF`: JSON on stdout.
pub fn inspect(config: &Config, reference: &str) -> ExitCode {
    let r = match parse(reference) {
        Ok(r) => r,
        Err(c) => return c,
    };
    match registry::inspect(&config.state_dir, &r)
        .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
    {
        Ok(text) => {
            out(&text);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}
