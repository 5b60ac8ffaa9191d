//! Policy status.

use super::*;

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "security.weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
           "metadata": {"namespace": "shop", "name": name, "generation": 1}, "spec": spec})
}

fn accepted(api: &FakeApi, name: &str) -> Option<(String, String, String)> {
    let p = api.get("AuthorizationPolicy", &format!("shop/{name}"))?;
    let c = p["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")?
        .clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    Some((s("status"), s("reason"), s("message")))
}

#[tokio::test]
async fn each_policy_says_in_its_status_what_the_mesh_makes_of_it() {
    let api = cluster();
    let from = |p: &str| json!([{"from": [{"source": {"principals": [p]}}]}]);
    api.apply(policy(
        "ok",
        json!({"action": "ALLOW", "rules": from("cluster.local/ns/shop/sa/web")}),
    ));
    api.apply(policy(
        "bad",
        json!({"action": "ALLOW", "rules": [{"to": [{"operation": {"ports": ["eighty"]}}]}]}),
    ));
    api.apply(policy(
        "l7",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}),
    ));
    let c = controller(api.clone(), secret_source()).await;
    let all_written = || {
        ["ok", "bad", "l7"]
            .iter()
            .all(|n| accepted(&c.api, n).is_some())
    };
    assert!(
        until(Duration::from_secs(10), all_written).await,
        "{:?}",
        c.api.get("AuthorizationPolicy", "shop/bad")
    );

    let (status, reason, _) = accepted(&c.api, "ok").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Accepted"));
    let (status, reason, message) = accepted(&c.api, "bad").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Invalid"));
    assert!(
        message.contains("spec.rules[0].to[0].operation.ports[0]")
            && message.contains("allows nothing"),
        "{message}"
    );
    let (status, reason, message) = accepted(&c.api, "l7").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "L7RulesAtL4"));
    assert!(message.contains("waypoint"), "{message}");

    // Written once each: its own patch, coming back as an event, changes nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.api.patches("authorizationpolicies"), 3);

    // Fixed: the condition follows.
    let mut fixed = c.api.get("AuthorizationPolicy", "shop/bad").unwrap();
    fixed["spec"]["rules"][0]["to"][0]["operation"]["ports"] = json!(["8080"]);
    fixed["metadata"]["generation"] = json!(2);
    c.api.apply(fixed);
    let fixed_ok = || accepted(&c.api, "bad").is_some_and(|(s, _, _)| s == "True");
    assert!(
        until(Duration::from_secs(10), fixed_ok).await,
        "{:?}",
        accepted(&c.api, "bad")
    );
}
