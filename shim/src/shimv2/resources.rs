//! The VM's size for a pod: the annotations `io.husk.vm.vcpus` and `io.husk.vm.memory`
//! first, then the container's own resources (the OCI spec's `linux.resources`: CPU
//! quota over period, memory limit), then the configuration's defaults
//! (`/etc/husk/config.toml`).

use serde_json::Value;

/// The annotation that sets the VM's vCPUs.
pub const VCPUS_ANNOTATION: &str = "io.husk.vm.vcpus";
/// The annotation that sets the VM's memory: MiB, or a number with K/M/G (or Ki/Mi/Gi).
pub const MEMORY_ANNOTATION: &str = "io.husk.vm.memory";
/// The most vCPUs a pod may ask for.
pub const MAX_VCPUS: u32 = 64;
/// What the guest's kernel and agent need beside a container's memory limit.
pub const GUEST_OVERHEAD_MIB: u32 = 128;

/// Why a size was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResourcesError {
    #[error("annotation {key}={value:?}: {why}")]
    Annotation {
        key: &'static str,
        value: String,
        why: &'static str,
    },
}

/// The VM's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u32,
}

/// The size for the runtime spec `spec` (JSON), with `defaults` from the configuration.
pub fn vm_size(spec: &Value, defaults: VmSize) -> Result<VmSize, ResourcesError> {
    let ann = |k: &str| {
        spec.pointer("/annotations")
            .and_then(|a| a.get(k))
            .and_then(Value::as_str)
    };
    let res = spec.pointer("/linux/resources");
    let vcpus = match ann(VCPUS_ANNOTATION) {
        Some(v) => parse_vcpus(v)?,
        None => res.and_then(cpus_of).unwrap_or(defaults.vcpus),
    };
    let memory_mib = match ann(MEMORY_ANNOTATION) {
        Some(v) => parse_memory(v)?,
        None => res
            .and_then(memory_of)
            .map(|m| m.max(defaults.memory_mib))
            .unwrap_or(defaults.memory_mib),
    };
    Ok(VmSize { vcpus, memory_mib })
}

fn parse_vcpus(v: &str) -> Result<u32, ResourcesError> {
    let bad = |why| ResourcesError::Annotation {
        key: VCPUS_ANNOTATION,
        value: v.to_string(),
        why,
    };
    let n: u32 = v.trim().parse().map_err(|_| bad("not a whole number"))?;
    if n == 0 || n > MAX_VCPUS {
        return Err(bad("must be 1 to 64"));
    }
    Ok(n)
}

fn parse_memory(v: &str) -> Result<u32, ResourcesError> {
    let bad = |why| ResourcesError::Annotation {
        key: MEMORY_ANNOTATION,
        value: v.to_string(),
        why,
    };
    let t = v.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| bad("not a size"))?;
    let mib = match unit
        .trim_end_matches(['i', 'B'])
        .to_ascii_uppercase()
        .as_str()
    {
        "" | "M" => Some(n),
        "K" => Some(n.div_ceil(1024)),
        "G" => n.checked_mul(1024),
        _ => return Err(bad("the unit must be K, M or G")),
    };
    let mib = mib
        .and_then(|m| u32::try_from(m).ok())
        .ok_or_else(|| bad("too large"))?;
    if mib < crate::config::MIN_MEMORY_MIB {
        return Err(bad("less than 64 MiB"));
    }
    Ok(mib)
}

/// vCPUs from a CPU quota and period (rounded up), if set.
fn cpus_of(res: &Value) -> Option<u32> {
    let quota = res.pointer("/cpu/quota")?.as_i64()?;
    let period = res.pointer("/cpu/period")?.as_u64()?;
    let quota = u64::try_from(quota).ok().filter(|q| *q > 0)?;
    if period == 0 {
        return None;
    }
    u32::try_from(quota.div_ceil(period))
        .ok()
        .map(|n| n.clamp(1, MAX_VCPUS))
}

/// MiB for a memory limit (rounded up) plus the guest's own, if set.
fn memory_of(res: &Value) -> Option<u32> {
    let limit = res.pointer("/memory/limit")?.as_i64()?;
    let limit = u64::try_from(limit).ok().filter(|l| *l > 0)?;
    let mib = u32::try_from(limit.div_ceil(1 << 20)).ok()?;
    mib.checked_add(GUEST_OVERHEAD_MIB)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const D: VmSize = VmSize {
        vcpus: 1,
        memory_mib: 256,
    };

    #[test]
    fn annotations_win() {
        let s = json!({"annotations": {"io.husk.vm.vcpus": "4", "io.husk.vm.memory": "1Gi"},
            "linux": {"resources": {"cpu": {"quota": 200000, "period": 100000}}}});
        assert_eq!(
            vm_size(&s, D).unwrap(),
            VmSize {
                vcpus: 4,
                memory_mib: 1024
            }
        );
    }

    #[test]
    fn resources_then_defaults() {
        let s = json!({"linux": {"resources": {"cpu": {"quota": 150000, "period": 100000},
            "memory": {"limit": 536870912}}}});
        assert_eq!(
            vm_size(&s, D).unwrap(),
            VmSize {
                vcpus: 2,
                memory_mib: 512 + GUEST_OVERHEAD_MIB
            }
        );
        assert_eq!(vm_size(&json!({}), D).unwrap(), D);
        // An unlimited quota (-1) is no size.
        let s = json!({"linux": {"resources": {"cpu": {"quota": -1, "period": 100000}}}});
        assert_eq!(vm_size(&s, D).unwrap(), D);
        // A small limit never shrinks the VM below the default.
        let s = json!({"linux": {"resources": {"memory": {"limit": 1048576}}}});
        assert_eq!(vm_size(&s, D).unwrap().memory_mib, 256);
    }

    #[test]
    fn memory_units() {
        assert_eq!(parse_memory("512").unwrap(), 512);
        assert_eq!(parse_memory("512M").unwrap(), 512);
        assert_eq!(parse_memory("512Mi").unwrap(), 512);
        assert_eq!(parse_memory("2G").unwrap(), 2048);
        assert_eq!(parse_memory("131072K").unwrap(), 128);
        assert!(parse_memory("32").is_err());
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("1T").is_err());
        assert!(parse_memory("99999999999G").is_err());
    }

    #[test]
    fn bad_vcpus() {
        for v in ["0", "65", "-1", "two", ""] {
            let s = json!({"annotations": {"io.husk.vm.vcpus": v}});
            assert!(vm_size(&s, D).is_err(), "{v}");
        }
    }
}
