//! Sybil and eclipse attacks in the simulator: colluding adversaries (they name only each other,
//! acknowledge and drop every STORE, never return a value) against each defence.

use kad_sim::sybil::{Defence, DefenceReport, SybilReport, SybilScenario, run_sybil_scenario};

fn scenario(nodes: usize, seeds: usize, subnets: u32, defences: &[Defence]) -> SybilScenario {
    let mut sc = SybilScenario::default();
    sc.nodes = nodes;
    sc.lookups = 100;
    sc.records = 40;
    sc.bootstrap_seeds = seeds;
    sc.adversary_subnets = subnets;
    sc.defences = defences.to_vec();
    sc
}

fn run(r: &SybilReport, d: Defence) -> &DefenceReport {
    r.runs
        .iter()
        .find(|x| x.defence == d)
        .expect("setting was run")
}

/// Sybils from four /24s, each node joining through one random earlier node: without defences
/// the nodes that joined through an adversary are eclipsed (no honest table holds them) and
/// most lookups and gets fail; the per-subnet limit keeps the adversaries to two per bucket and
/// lookup and restores every lookup and get, alone or with disjoint paths.
#[test]
fn clustered_sybils_eclipse_the_undefended_network_and_the_subnet_limit_stops_them() {
    let sc = scenario(
        300,
        1,
        4,
        &[Defence::None, Defence::SubnetLimit, Defence::All],
    );
    let r = run_sybil_scenario(&sc, |_, _, _| {});
    assert_eq!(r.adversaries, 60);
    let none = run(&r, Defence::None);
    println!("{}", serde_json::to_string(&r).unwrap());
    assert!(none.lookup_success < 0.7, "undefended: {none:?}");
    assert!(none.get_success < 0.8, "undefended: {none:?}");
    assert!(none.honest_unknown > 0.03, "undefended: {none:?}");
    assert!(none.network.adversary_answers > 0);
    for d in [Defence::SubnetLimit, Defence::All] {
        let x = run(&r, d);
        assert!(x.lookup_success >= 0.99, "{d:?}: {x:?}");
        assert!(x.get_success >= 0.99, "{d:?}: {x:?}");
        assert_eq!(x.honest_unknown, 0.0, "{d:?}: {x:?}");
        assert!(
            x.adversaries_in_tables < none.adversaries_in_tables / 2.0,
            "{d:?}: {x:?}"
        );
        assert!(x.put_honest_holders_mean > none.put_honest_holders_mean);
        assert_eq!(x.unfinished, 0);
    }
    assert_eq!(run(&r, Defence::All).disjoint_paths, 4);
}

/// Sybils each in a subnet of its own: the per-subnet limit never engages (the run is identical,
/// digest and all, to the undefended one), and disjoint lookup paths carry lookups and gets.
#[test]
fn spread_sybils_are_met_by_disjoint_paths() {
    let sc = scenario(
        300,
        3,
        0,
        &[Defence::None, Defence::SubnetLimit, Defence::DisjointPaths],
    );
    let r = run_sybil_scenario(&sc, |_, _, _| {});
    println!("{}", serde_json::to_string(&r).unwrap());
    let none = run(&r, Defence::None);
    let limit = run(&r, Defence::SubnetLimit);
    assert_eq!(limit.digest, none.digest);
    assert_eq!(limit.lookup_success, none.lookup_success);
    let paths = run(&r, Defence::DisjointPaths);
    assert!(paths.lookup_success >= 0.99, "{paths:?}");
    assert!(paths.get_success >= 0.99, "{paths:?}");
    assert!(paths.lookup_success >= none.lookup_success);
    // Disjoint paths cost requests: each path ends on its own.
    assert!(paths.rpcs_per_lookup_p50 > none.rpcs_per_lookup_p50);
}

/// Same arguments, same run; no adversaries, nothing lost under any setting.
#[test]
fn deterministic_and_harmless_without_adversaries() {
    let mut sc = scenario(120, 2, 4, &Defence::ALL);
    sc.adversary_fraction = 0.0;
    sc.lookups = 40;
    sc.records = 10;
    let a = run_sybil_scenario(&sc, |_, _, _| {});
    for x in &a.runs {
        assert_eq!(x.lookup_success, 1.0, "{x:?}");
        assert_eq!(x.get_success, 1.0, "{x:?}");
        assert_eq!(x.network.adversary_answers, 0);
    }
    let b = run_sybil_scenario(&sc, |_, _, _| {});
    let digests = |r: &SybilReport| r.runs.iter().map(|x| x.digest.clone()).collect::<Vec<_>>();
    assert_eq!(digests(&a), digests(&b));
}

/// Targeted eclipse: adversaries that grind ids around a few record keys (as without an id
/// cost) become those keys' closest nodes and swallow them; disjoint paths cannot help (the
/// adversaries are the true closest), the subnet limit can when they share subnets. With an
/// id cost they are back to random ids: the other tests.
#[test]
fn targeted_ids_swallow_their_keys_unless_the_subnet_limit_applies() {
    let mut sc = scenario(
        300,
        3,
        4,
        &[Defence::None, Defence::DisjointPaths, Defence::SubnetLimit],
    );
    sc.targeted = true;
    let r = run_sybil_scenario(&sc, |_, _, _| {});
    println!("{}", serde_json::to_string(&r).unwrap());
    assert!(r.targeted);
    for d in [Defence::None, Defence::DisjointPaths] {
        let x = run(&r, d);
        assert_eq!(x.targeted_gets, 3, "{d:?}: {x:?}");
        assert_eq!(x.targeted_get_success, 0.0, "{d:?}: {x:?}");
    }
    let x = run(&r, Defence::SubnetLimit);
    assert_eq!(x.targeted_get_success, 1.0, "{x:?}");
    assert!(x.get_success >= 0.99, "{x:?}");
}
