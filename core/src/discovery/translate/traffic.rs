//! `TrafficPolicy` objects into the model: validated here, so that a policy with a mistake
//! is a problem naming its field and is left out, never half applied.

use super::{Ctx, describe};

pub(super) fn traffic_policies(cx: &mut Ctx<'_>) {
    let objects = cx.objects;
    for (key, stored) in &objects.traffic_policies {
        let who = describe("TrafficPolicy", key, &stored.origin);
        let policy = stored.object.to_model();
        let errors = policy.validate();
        if errors.is_empty() {
            cx.out.traffic_policies.push(policy);
            cx.out.traffic_policy_origins.push(who);
        } else {
            for e in errors {
                cx.problem(who.clone(), e.path, e.message);
            }
        }
    }
}
