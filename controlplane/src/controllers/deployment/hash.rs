//! The `pod-template-hash` of a Deployment's template (upstream's `ComputeHash`): FNV-32a of
//! the template, then of `status.collisionCount` as 8 little-endian bytes, printed in decimal
//! and made safe for names with `SafeEncodeString`.
//!
//! Upstream feeds the hasher Go's `spew` dump of the template struct; this hashes the
//! template's JSON (keys in a fixed order) instead, so the names differ from a real cluster's
//! while keeping what matters: the same template and collision count give the same hash.

use k8s_openapi::api::core::v1::PodTemplateSpec;

/// The label a Deployment adds to its ReplicaSets' selector and template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// FNV-1a, 32 bits, continuing from `hash`.
fn fnv32a(mut hash: u32, bytes: &[u8]) -> u32 {
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// Upstream's `rand.SafeEncodeString`: each byte mapped onto consonants and digits that
/// cannot spell words.
pub fn safe_encode(text: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    text.bytes()
        .map(|byte| char::from(ALPHANUMS[usize::from(byte) % ALPHANUMS.len()]))
        .collect()
}

/// The hash of `template` with `collision_count`.
pub fn compute(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    // Serializing a k8s-openapi type to JSON cannot fail: no maps with non-string keys.
    let dump = serde_json::to_vec(template).unwrap_or_default();
    let mut hash = fnv32a(FNV_OFFSET, &dump);
    if let Some(count) = collision_count {
        let mut bytes = [0_u8; 8];
        bytes[..4].copy_from_slice(&count.cast_unsigned().to_le_bytes());
        hash = fnv32a(hash, &bytes);
    }
    safe_encode(&hash.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use kube::api::ObjectMeta;

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_owned(), "web".to_owned())].into()),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    image: Some(image.into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
        }
    }

    #[test]
    fn fnv32a_matches_the_reference_vectors() {
        assert_eq!(fnv32a(FNV_OFFSET, b""), 0x811c_9dc5);
        assert_eq!(fnv32a(FNV_OFFSET, b"a"), 0xe40c_292c);
        assert_eq!(fnv32a(FNV_OFFSET, b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn safe_encode_as_upstream() {
        // '0' is byte 48, 48 % 27 = 21: '4'; '9' is 57, 57 % 27 = 3: 'f'.
        assert_eq!(safe_encode("0"), "4");
        assert_eq!(safe_encode("9"), "f");
        assert_eq!(safe_encode("1234567890"), "56789bcdf4");
    }

    #[test]
    fn same_template_same_hash_and_collisions_change_it() {
        let first = compute(&template("a:1"), None);
        assert_eq!(first, compute(&template("a:1"), None));
        assert_ne!(first, compute(&template("a:2"), None));
        assert_ne!(first, compute(&template("a:1"), Some(1)));
        assert_ne!(
            compute(&template("a:1"), Some(1)),
            compute(&template("a:1"), Some(2))
        );
        assert!(
            first
                .chars()
                .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
        );
        assert!(!first.is_empty() && first.len() <= 10);
    }
}
