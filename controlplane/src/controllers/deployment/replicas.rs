//! The replica arithmetic of upstream's `deployment/util`: maxSurge and maxUnavailable from
//! ints or percentages (surge rounds up, unavailable down, never both 0), how far a new
//! ReplicaSet may grow, and proportional scaling of several ReplicaSets.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A maxSurge / maxUnavailable value that is neither an int nor a percentage.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid value for IntOrString: {0}")]
pub struct InvalidIntOrPercent(String);

/// Upstream's `GetScaledValueFromIntOrPercent`.
pub fn scaled_value(
    value: &IntOrString,
    total: i32,
    round_up: bool,
) -> Result<i32, InvalidIntOrPercent> {
    match value {
        IntOrString::Int(value) => Ok(*value),
        IntOrString::String(text) => {
            let Some(number) = text.strip_suffix('%') else {
                return Err(InvalidIntOrPercent(
                    "invalid type: string is not a percentage".into(),
                ));
            };
            let percent: i64 = number
                .parse()
                .map_err(|error| InvalidIntOrPercent(format!("invalid value {text:?}: {error}")))?;
            let product = percent * i64::from(total);
            let scaled = if round_up {
                product.div_euclid(100) + i64::from(product.rem_euclid(100) != 0)
            } else {
                product.div_euclid(100)
            };
            i32::try_from(scaled).map_err(|_| InvalidIntOrPercent(format!("{text:?} is too large")))
        }
    }
}

/// Upstream's `ResolveFenceposts`: (maxSurge, maxUnavailable) for `desired` replicas.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), InvalidIntOrPercent> {
    let zero = IntOrString::Int(0);
    let surge = scaled_value(max_surge.unwrap_or(&zero), desired, true)?;
    let unavailable = scaled_value(max_unavailable.unwrap_or(&zero), desired, false)?;
    if surge == 0 && unavailable == 0 {
        // Both 0 would block a rollout: allow one unavailable pod.
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

/// `spec.replicas` (defaulted to 1).
pub fn desired(deployment: &Deployment) -> i32 {
    deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1)
}

fn rolling_fenceposts(deployment: &Deployment) -> Result<Option<(i32, i32)>, InvalidIntOrPercent> {
    let Some(strategy) = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.strategy.as_ref())
    else {
        return Ok(None);
    };
    if strategy
        .type_
        .as_deref()
        .is_some_and(|type_| type_ != "RollingUpdate")
    {
        return Ok(None);
    }
    let rolling = strategy.rolling_update.clone().unwrap_or_default();
    resolve_fenceposts(
        rolling.max_surge.as_ref(),
        rolling.max_unavailable.as_ref(),
        desired(deployment),
    )
    .map(Some)
}

/// Upstream's `MaxSurge`: 0 unless RollingUpdate.
pub fn max_surge(deployment: &Deployment) -> Result<i32, InvalidIntOrPercent> {
    Ok(rolling_fenceposts(deployment)?.map_or(0, |(surge, _)| surge))
}

/// Upstream's `MaxUnavailable`: 0 unless RollingUpdate with replicas, at most the replicas.
pub fn max_unavailable(deployment: &Deployment) -> Result<i32, InvalidIntOrPercent> {
    let replicas = desired(deployment);
    if replicas == 0 {
        return Ok(0);
    }
    Ok(rolling_fenceposts(deployment)?.map_or(0, |(_, unavailable)| unavailable.min(replicas)))
}

/// `spec.replicas` of a ReplicaSet (defaulted to 1).
pub fn spec_replicas(replicaset: &ReplicaSet) -> i32 {
    replicaset
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1)
}

/// `status.replicas` of a ReplicaSet.
pub fn status_replicas(replicaset: &ReplicaSet) -> i32 {
    replicaset
        .status
        .as_ref()
        .map_or(0, |status| status.replicas)
}

/// `status.availableReplicas` of a ReplicaSet.
pub fn available_replicas(replicaset: &ReplicaSet) -> i32 {
    replicaset
        .status
        .as_ref()
        .and_then(|status| status.available_replicas)
        .unwrap_or(0)
}

/// How many replicas the new ReplicaSet should have now (upstream's `NewRSNewReplicas`).
/// Unlike upstream, the pods of a ReplicaSet count until its controller has removed them
/// (the larger of its spec and status replicas), so a scale up never overtakes a scale down
/// still under way and maxSurge holds for pods, not only for specs.
pub fn new_rs_new_replicas(
    deployment: &Deployment,
    all: &[&ReplicaSet],
    new: &ReplicaSet,
) -> Result<i32, InvalidIntOrPercent> {
    let Some((surge, _)) = rolling_fenceposts(deployment)? else {
        return Ok(desired(deployment));
    };
    let current: i32 = all
        .iter()
        .map(|replicaset| spec_replicas(replicaset).max(status_replicas(replicaset)))
        .sum();
    let max_total = desired(deployment) + surge;
    if current >= max_total {
        return Ok(spec_replicas(new));
    }
    let scale_up = (max_total - current).min(desired(deployment) - spec_replicas(new));
    Ok(spec_replicas(new) + scale_up.max(0))
}

/// The change of one ReplicaSet's size when the deployment is scaled proportionally
/// (upstream's `GetProportion`), given the `max_replicas` annotation it carries (or the
/// deployment's current replicas).
pub fn proportion(
    replicas: i32,
    annotated_max: i32,
    deployment_replicas: i32,
    surge: i32,
    to_add: i32,
    added: i32,
) -> i32 {
    if replicas == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = if deployment_replicas == 0 {
        -replicas
    } else if annotated_max == 0 {
        0
    } else {
        let target =
            f64::from(replicas) * f64::from(deployment_replicas + surge) / f64::from(annotated_max);
        // Rounded as Go's math.Round (half away from zero), in i32 range by construction.
        #[expect(clippy::cast_possible_truncation, reason = "a replica count")]
        let rounded = target.round() as i32;
        rounded - replicas
    };
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(value: i32) -> IntOrString {
        IntOrString::Int(value)
    }

    fn percent(text: &str) -> IntOrString {
        IntOrString::String(text.into())
    }

    #[test]
    fn percentages_round_surge_up_and_unavailable_down() {
        assert_eq!(
            resolve_fenceposts(Some(&percent("25%")), Some(&percent("25%")), 10),
            Ok((3, 2))
        );
        assert_eq!(
            resolve_fenceposts(Some(&percent("25%")), Some(&percent("25%")), 4),
            Ok((1, 1))
        );
        assert_eq!(
            resolve_fenceposts(Some(&percent("10%")), Some(&percent("10%")), 5),
            Ok((1, 0))
        );
        assert_eq!(
            resolve_fenceposts(Some(&int(1)), Some(&int(0)), 10),
            Ok((1, 0))
        );
        assert_eq!(
            resolve_fenceposts(Some(&int(2)), Some(&percent("50%")), 3),
            Ok((2, 1))
        );
    }

    #[test]
    fn both_zero_allows_one_unavailable() {
        assert_eq!(
            resolve_fenceposts(Some(&int(0)), Some(&int(0)), 10),
            Ok((0, 1))
        );
        assert_eq!(
            resolve_fenceposts(Some(&percent("1%")), Some(&percent("1%")), 0),
            Ok((0, 1))
        );
        assert_eq!(resolve_fenceposts(None, None, 3), Ok((0, 1)));
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(scaled_value(&percent("25"), 10, true).is_err());
        assert!(scaled_value(&percent("x%"), 10, true).is_err());
        assert_eq!(scaled_value(&percent("100%"), 7, false), Ok(7));
        assert_eq!(scaled_value(&percent("0%"), 7, true), Ok(0));
    }

    #[test]
    fn proportions_as_upstream() {
        // 10 -> 15 replicas, surge 0: an RS with 5 of the 10 gets 3 (7.5 rounds to 8).
        assert_eq!(proportion(5, 10, 15, 0, 5, 0), 3);
        // Never more than what is left to add.
        assert_eq!(proportion(5, 10, 15, 0, 5, 4), 1);
        // Scaling down takes proportionally too.
        assert_eq!(proportion(6, 10, 5, 0, -5, 0), -3);
        // To zero: all of it.
        assert_eq!(proportion(4, 10, 0, 0, -10, 0), -4);
        assert_eq!(proportion(0, 10, 15, 0, 5, 0), 0);
    }
}
