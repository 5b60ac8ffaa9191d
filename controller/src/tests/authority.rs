//! Where the CA comes from: the Secret it creates, files, a broken Secret.

use super::*;

#[tokio::test]
async fn the_created_root_survives_a_restart_and_ca_files_are_used_as_given() {
    let api = cluster();
    let first = controller(api.clone(), secret_source()).await;
    let secret = api
        .get("Secret", "weft/weft-ca")
        .expect("the CA Secret was created");
    assert!(secret["data"]["ca-key.pem"].is_string());
    let root = first.anchors.certificates().to_vec();
    drop(first);
    let second = controller(api.clone(), secret_source()).await;
    assert_eq!(
        second.anchors.certificates(),
        root.as_slice(),
        "a restart keeps the root"
    );

    // CA files (Istio's cacerts layout) instead of the Secret.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) =
        weft_core::identity::generate_root("files root", Duration::from_secs(86400)).unwrap();
    std::fs::write(dir.path().join("ca-cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("ca-key.pem"), &key).unwrap();
    let api = cluster();
    let c = controller(api, CaSource::Files(dir.path().to_owned())).await;
    let want = TrustAnchors::from_pem(&cert, "test").unwrap();
    assert_eq!(c.anchors.certificates(), want.certificates());
    let tokens = tempfile::tempdir().unwrap();
    c.remote("weftd-a", &tokens, true)
        .issue(&id("shop", "reviews"))
        .await
        .unwrap();

    // A bad CA Secret stops the start with a message that names it.
    let api = cluster();
    api.apply(json!({"apiVersion": "v1", "kind": "Secret",
                     "metadata": {"namespace": "weft", "name": "weft-ca"},
                     "data": {"ca-cert.pem": "bm90IGEgY2VydA=="}}));
    let client = kube::Client::new(api.clone(), "default");
    let err = run::start(options(secret_source()), client, CancellationToken::new())
        .await
        .err()
        .expect("a broken CA Secret must not start");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("weft/weft-ca") && msg.contains("ca-key.pem"),
        "{msg}"
    );
}
