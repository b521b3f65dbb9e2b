//! The checks the interop tests apply to the clients' reports must be able
//! to fail: each is shown a credential it has to refuse. Needs no Python.

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use signet_tests::{CaOptions, CaProcess, pem_chain};

use crate::{check_bundle, check_chain};

#[tokio::test]
async fn the_judges_refuse_a_wrong_id_a_foreign_root_and_a_wrong_bundle() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let id = ca.id("/judged");
    let svid = ca.mint_cli(&id, "judged", &[]).await.unwrap();
    let chain = pem_chain(&svid.chain);
    let roots = ca.bundle_path();

    check_chain(&roots, &chain, &id).unwrap();
    check_bundle(&roots, &std::fs::read_to_string(&roots).unwrap()).unwrap();

    let err = check_chain(&roots, &chain, &ca.id("/someone-else")).unwrap_err();
    assert!(err.contains("URI SANs"), "{err}");

    // A root of another CA: openssl must refuse the chain under it.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let foreign = params.self_signed(&key).unwrap();
    let foreign_roots = ca.scratch_dir().join("foreign.pem");
    std::fs::write(&foreign_roots, foreign.pem()).unwrap();
    let err = check_chain(&foreign_roots, &chain, &id).unwrap_err();
    assert!(err.contains("openssl verify refused"), "{err}");

    // A leaf is not the bundle; neither is another CA's root.
    let err = check_bundle(&roots, &chain).unwrap_err();
    assert!(err.contains("not the"), "{err}");
    let err = check_bundle(&roots, &foreign.pem()).unwrap_err();
    assert!(err.contains("not the"), "{err}");
    assert!(check_bundle(&roots, "no PEM here").is_err());
}
