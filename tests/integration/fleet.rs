//! `STATE_STORE=redis://`: sidecars sharing one credential through a real `redis-server`.
//! Single-flight across the fleet with rotating refresh tokens, encryption at rest, a wrong
//! key, a lock holder that died, and Redis going away and coming back empty (and re-seeded by a
//! sidecar that missed a rotation).

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::common::mock_idp::{CLIENT_ID, CLIENT_SECRET, MockIdp};
use crate::common::mock_upstream::{MockUpstream, Mode};
use crate::common::redis::{Redis, Relay};
use crate::common::{Sidecar, call, mcp_post, poll};

/// A refresh-token canary as the rules want them: long, with `+ / = &`.
fn canary() -> String {
    format!("canary-fleet-rt+/=&{}", "x".repeat(200))
}

fn key_file(dir: &tempfile::TempDir, name: &str, byte: u8) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{byte:02x}").repeat(32)).unwrap();
    path.to_str().unwrap().to_string()
}

fn linked() -> (MockUpstream, MockIdp) {
    let upstream = MockUpstream::start("not-issued-yet", Mode::Legacy);
    let idp = MockIdp::start(Some(upstream.state.clone()));
    (upstream, idp)
}

/// A client-credentials sidecar of the fleet in `redis` whose lock outlives its tokens (10 s),
/// ready and having served one call.
async fn long_lock_sidecar(
    upstream: &MockUpstream,
    idp: &MockIdp,
    redis: &Redis,
    key: &str,
) -> Sidecar {
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream.url()),
        ("CLIENT_ID", CLIENT_ID),
        ("CLIENT_SECRET", CLIENT_SECRET),
        ("TOKEN_URL", &idp.url("/token")),
        ("STATE_STORE", &redis.url()),
        ("STATE_KEY_FILE", key),
        ("STATE_DIR", "/proc/not-writable"),
        ("STATE_LOCK_TTL", "10s"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    assert_eq!(echo(&sidecar, 1).await, 200);
    sidecar
}

async fn echo(sidecar: &Sidecar, id: u64) -> u16 {
    mcp_post(
        &reqwest::Client::new(),
        &sidecar.url("/mcp"),
        call(id, "echo", json!({"text": "hi"})),
    )
    .send()
    .await
    .map(|r| r.status().as_u16())
    .unwrap_or(0)
}

async fn status(sidecar: &Sidecar) -> Value {
    reqwest::get(sidecar.url("/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_shares_one_rotating_refresh_token_and_refreshes_once_per_lifetime() {
    let redis = Redis::start();
    let (upstream, idp) = linked();
    *idp.state.expires_in.lock().unwrap() = Some(3);
    let seed = canary();
    idp.state.insert_refresh_token(&seed, "mcp:tools");
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir, "key", 7);
    let (upstream_url, token_url, store) = (upstream.url(), idp.url("/token"), redis.url());
    let mut fleet = Vec::new();
    for _ in 0..4 {
        fleet.push(
            Sidecar::start(&[
                ("UPSTREAM_URL", &upstream_url),
                ("CLIENT_ID", CLIENT_ID),
                ("REFRESH_TOKEN", &seed),
                ("TOKEN_URL", &token_url),
                ("STATE_STORE", &store),
                ("STATE_KEY_FILE", &key),
                ("STATE_DIR", "/proc/not-writable"),
                ("REFRESH_SKEW", "1s"),
            ])
            .await,
        );
    }
    for sidecar in &fleet {
        sidecar.wait_reason("ready").await;
    }
    // Calls from every sidecar across several token lifetimes: every one succeeds, and the
    // refresh token is never spent twice.
    let started = std::time::Instant::now();
    let mut id = 0;
    let mut failed = 0;
    while started.elapsed() < std::time::Duration::from_secs(10) {
        for sidecar in &fleet {
            id += 1;
            if echo(sidecar, id).await != 200 {
                failed += 1;
            }
        }
    }
    assert_eq!(idp.state.invalid_grants.load(Ordering::SeqCst), 0);
    assert_eq!(failed, 0, "failed calls out of {id}");
    let refreshes = idp.state.grant_count("refresh_token");
    // 10 s of 3 s tokens (refreshed ahead of expiry): a handful for the whole fleet, not one
    // per sidecar per lifetime (that would be 4x as many).
    assert!(
        (2..=9).contains(&refreshes),
        "token requests for the fleet: {refreshes}"
    );
    let shown = status(&fleet[0]).await;
    assert_eq!(shown["token"]["store"]["kind"], "redis", "{shown}");
    assert_eq!(shown["token"]["store"]["healthy"], true, "{shown}");

    // Nothing in Redis is in clear: not the seed, not a rotated refresh token, not an access
    // token.
    let dump = redis.dump();
    assert!(dump.contains("mcp-sidecar:"), "{dump}");
    assert!(
        !dump.contains("canary"),
        "a token is in Redis in clear: {dump}"
    );
    for live in idp.state.live_refresh_tokens() {
        assert!(!dump.contains(&live));
    }
    for sidecar in &fleet {
        for path in ["/ready", "/status"] {
            let body = reqwest::get(sidecar.url(path))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(!body.contains("canary"), "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_across_a_fleet_cost_one_token_request() {
    let redis = Redis::start();
    let (upstream, idp) = linked();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir, "key", 3);
    let (upstream_url, token_url, store) = (upstream.url(), idp.url("/token"), redis.url());
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(
            Sidecar::start(&[
                ("UPSTREAM_URL", &upstream_url),
                ("CLIENT_ID", CLIENT_ID),
                ("CLIENT_SECRET", CLIENT_SECRET),
                ("TOKEN_URL", &token_url),
                ("STATE_STORE", &store),
                ("STATE_KEY_FILE", &key),
                ("STATE_DIR", "/proc/not-writable"),
            ])
            .await,
        );
    }
    for sidecar in &fleet {
        sidecar.wait_reason("ready").await;
        assert_eq!(echo(sidecar, 1).await, 200);
    }
    assert_eq!(idp.state.grant_count("client_credentials"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_state_key_is_reported_as_such() {
    let redis = Redis::start();
    let (upstream, idp) = linked();
    let dir = tempfile::tempdir().unwrap();
    let (upstream_url, token_url, store) = (upstream.url(), idp.url("/token"), redis.url());
    let start = |key: String| {
        let (upstream_url, token_url, store) =
            (upstream_url.clone(), token_url.clone(), store.clone());
        async move {
            Sidecar::start(&[
                ("UPSTREAM_URL", &upstream_url),
                ("CLIENT_ID", CLIENT_ID),
                ("CLIENT_SECRET", CLIENT_SECRET),
                ("TOKEN_URL", &token_url),
                ("STATE_STORE", &store),
                ("STATE_KEY_FILE", &key),
                ("STATE_DIR", "/proc/not-writable"),
            ])
            .await
        }
    };
    let first = start(key_file(&dir, "one", 1)).await;
    first.wait_reason("ready").await;
    let second = start(key_file(&dir, "two", 2)).await;
    let error = poll(
        || async {
            status(&second).await["token"]["last_error"]
                .as_str()
                .map(String::from)
        },
        |e| e.contains("another key"),
    )
    .await;
    let error = error.expect("the second sidecar reports the wrong key");
    assert!(error.contains("STATE_KEY_FILE"), "{error}");
    // It never asked the token endpoint: the stored state could not be read.
    assert_eq!(idp.state.grant_count("client_credentials"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_left_by_a_dead_holder_costs_one_expiry() {
    let redis = Redis::start();
    let (upstream, idp) = linked();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir, "key", 5);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream.url()),
        ("CLIENT_ID", CLIENT_ID),
        ("CLIENT_SECRET", CLIENT_SECRET),
        ("TOKEN_URL", &idp.url("/token")),
        ("STATE_STORE", &redis.url()),
        ("STATE_KEY_FILE", &key),
        ("STATE_DIR", "/proc/not-writable"),
        ("STATE_LOCK_TTL", "3s"),
    ])
    .await;
    // A sidecar that took the lock and was killed: its lock lives 3 s more.
    sidecar.wait_reason("ready").await;
    let keys = redis.command(&["KEYS", "mcp-sidecar:*:state"]).unwrap();
    let state_key = keys.lines().last().unwrap().to_string();
    let lock_key = state_key.replace(":state", ":lock");
    redis.command(&["DEL", &state_key]).unwrap();
    assert_eq!(
        redis
            .command(&["SET", &lock_key, "dead-host/pid-1 0123", "PX", "3000"])
            .as_deref(),
        Some("+OK")
    );
    // A token request now has to wait for the lock; the holder shows in /status meanwhile.
    let before = idp.state.grant_count("client_credentials");
    upstream.state.set_token("rejected-now");
    let waiter = tokio::spawn({
        let url = sidecar.url("/mcp");
        async move {
            mcp_post(
                &reqwest::Client::new(),
                &url,
                call(7, "echo", json!({"text": "hi"})),
            )
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
        }
    });
    let holder = poll(
        || async {
            status(&sidecar).await["token"]["store"]["lock_holder"]
                .as_str()
                .map(String::from)
        },
        |h| h == "dead-host/pid-1",
    )
    .await;
    assert!(holder.is_some(), "{}", status(&sidecar).await);
    assert_eq!(
        waiter.await.unwrap(),
        200,
        "the call succeeds after the expiry"
    );
    assert_eq!(idp.state.grant_count("client_credentials"), before + 1);
    // The state is back in Redis, and the lock released.
    assert!(
        redis
            .command(&["GET", &state_key])
            .unwrap()
            .contains("msc1.")
    );
    let released = poll(
        || async { redis.command(&["EXISTS", &lock_key]) },
        |n| n == ":0",
    )
    .await;
    assert!(released.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_serves_the_held_token_then_auth_required_then_reseeds() {
    let mut redis = Redis::start();
    let port = redis.port;
    let (upstream, idp) = linked();
    *idp.state.expires_in.lock().unwrap() = Some(4);
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir, "key", 9);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream.url()),
        ("CLIENT_ID", CLIENT_ID),
        ("CLIENT_SECRET", CLIENT_SECRET),
        ("TOKEN_URL", &idp.url("/token")),
        ("STATE_STORE", &redis.url()),
        ("STATE_KEY_FILE", &key),
        ("STATE_DIR", "/proc/not-writable"),
        ("CONNECT_TIMEOUT", "1s"),
        ("READY_INTERVAL", "1s"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    let requests = idp.state.grant_count("client_credentials");
    redis.kill();
    // The token held in memory keeps serving while it is valid.
    assert_eq!(echo(&sidecar, 1).await, 200);
    // Once it expires, no token is requested without the fleet lock: auth_required, naming
    // the store.
    let ready = sidecar.wait_reason("auth_required").await;
    let detail = ready["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("shared state store"), "{ready}");
    assert_eq!(idp.state.grant_count("client_credentials"), requests);
    let shown = status(&sidecar).await;
    assert_eq!(shown["token"]["store"]["healthy"], false, "{shown}");

    // Redis comes back empty: the sidecar gets a token under the lock and stores it again.
    let redis = Redis::start_on(port);
    sidecar.wait_reason("ready").await;
    let stored = poll(
        || async { redis.command(&["KEYS", "mcp-sidecar:*:state"]) },
        |keys| keys.contains("mcp-sidecar:"),
    )
    .await;
    assert!(stored.is_some(), "the store was re-seeded");
    assert_eq!(echo(&sidecar, 2).await, 200);
}

/// Two named upstreams of one sidecar with the same URL and client (two accounts of one
/// server, say) keep separate Redis entries and locks: the upstream's name is in the key.
#[tokio::test(flavor = "multi_thread")]
async fn two_named_upstreams_never_share_a_fleet_entry() {
    let redis = Redis::start();
    let (upstream, idp) = linked();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir, "key", 5);
    let (upstream_url, token_url, store) = (upstream.url(), idp.url("/token"), redis.url());
    let mut env = vec![
        ("STATE_STORE", store.as_str()),
        ("STATE_KEY_FILE", key.as_str()),
        ("STATE_DIR", "/proc/not-writable"),
    ];
    let keys: Vec<String> = ["UPSTREAMS__ONE__", "UPSTREAMS__TWO__"]
        .iter()
        .flat_map(|prefix| {
            ["UPSTREAM_URL", "CLIENT_ID", "CLIENT_SECRET", "TOKEN_URL"]
                .map(|k| format!("{prefix}{k}"))
        })
        .collect();
    for (i, k) in keys.iter().enumerate() {
        let value = match i % 4 {
            0 => upstream_url.as_str(),
            1 => CLIENT_ID,
            2 => CLIENT_SECRET,
            _ => token_url.as_str(),
        };
        env.push((k.as_str(), value));
    }
    let _sidecar = Sidecar::start(&env).await;
    // Each upstream obtains a token and stores it under its own key. (Both use one mock
    // upstream, which accepts only the token it saw issued last, so readiness is not the point.)
    let entries = || {
        let stored = redis
            .command(&["KEYS", "mcp-sidecar:*:state"])
            .unwrap_or_default();
        stored
            .lines()
            .filter(|l| l.starts_with("mcp-sidecar:"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    poll(
        || async { Some(idp.state.grant_count("client_credentials")) },
        |n| *n >= 2,
    )
    .await
    .expect("both upstreams ask for a token");
    let found = poll(|| async { Some(entries()) }, |e| e.len() >= 2).await;
    assert!(found.is_some(), "one shared entry: {:?}", entries());
    assert_eq!(entries().len(), 2, "{:?}", entries());
}

/// The long chaos run's failure: Redis restarted empty was re-seeded by a sidecar holding a
/// refresh token another sidecar had spent since. Here B misses A's rotation (cut off from
/// Redis), Redis loses everything while A is cut off, and B is back first and re-seeds the old
/// state. B must not spend its refresh token before A has put the newer state back, and then
/// adopts it: no invalid_grant, no token request at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_that_missed_a_rotation_does_not_spend_the_old_token_after_redis_lost_the_state()
{
    let redis = Redis::start();
    let (upstream, idp) = linked();
    *idp.state.expires_in.lock().unwrap() = Some(120);
    let seed = canary();
    idp.state.insert_refresh_token(&seed, "mcp:tools");
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir, "key", 11);
    let (to_a, to_b) = (
        Relay::start(redis.port).await,
        Relay::start(redis.port).await,
    );
    let (upstream_url, token_url) = (upstream.url(), idp.url("/token"));
    let start = |store: String| {
        let (upstream_url, token_url, key, seed) = (
            upstream_url.clone(),
            token_url.clone(),
            key.clone(),
            seed.clone(),
        );
        async move {
            Sidecar::start(&[
                ("UPSTREAM_URL", &upstream_url),
                ("CLIENT_ID", CLIENT_ID),
                ("REFRESH_TOKEN", &seed),
                ("TOKEN_URL", &token_url),
                ("STATE_STORE", &store),
                ("STATE_KEY_FILE", &key),
                ("STATE_DIR", "/proc/not-writable"),
                ("CONNECT_TIMEOUT", "1s"),
            ])
            .await
        }
    };
    let a = start(to_a.url()).await;
    a.wait_reason("ready").await;
    assert_eq!(echo(&a, 1).await, 200);
    let b = start(to_b.url()).await;
    b.wait_reason("ready").await;
    assert_eq!(echo(&b, 2).await, 200);
    assert_eq!(
        idp.state.grant_count("refresh_token"),
        1,
        "B adopted A's token"
    );

    // B is cut off from Redis; A rotates (the upstream rejects the token both hold).
    to_b.cut();
    let cut_off = poll(
        || async { status(&b).await["token"]["store"]["healthy"].as_bool() },
        |healthy| !*healthy,
    )
    .await;
    assert!(cut_off.is_some(), "B notices: {}", status(&b).await);
    upstream.state.set_token("rejected-now");
    assert_eq!(echo(&a, 3).await, 200);
    assert_eq!(idp.state.grant_count("refresh_token"), 2);

    // Redis loses everything while A is cut off; B, holding the spent refresh token, is back
    // first, and its call needs a new token (the upstream takes only A's). A is back half a
    // second later, within the re-seed's settling time.
    to_a.cut();
    assert_eq!(redis.command(&["FLUSHALL"]).as_deref(), Some("+OK"));
    to_b.heal();
    let back = poll(
        || async { status(&b).await["token"]["store"]["healthy"].as_bool() },
        |healthy| *healthy,
    )
    .await;
    assert!(
        back.is_some(),
        "B reaches Redis again: {}",
        status(&b).await
    );
    let (answer, ()) = tokio::join!(echo(&b, 4), async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        to_a.heal();
    });
    assert_eq!(idp.state.invalid_grants.load(Ordering::SeqCst), 0);
    assert_eq!(answer, 200, "B's call is answered with A's token");
    assert_eq!(
        idp.state.grant_count("refresh_token"),
        2,
        "B took A's newer state instead of asking"
    );
    assert_eq!(echo(&a, 5).await, 200);
    let shown = status(&b).await;
    assert_eq!(shown["token"]["store"]["healthy"], true, "{shown}");
}

/// The long chaos run's client-credentials failure: the lock lives longer (10 s here) than the
/// token (2 s), and its holder died mid-request. The waiter must not sit out the lock's expiry
/// with an expired token: a duplicate client-credentials request is harmless, so it takes the
/// lock over about a second after its token could no longer be sent.
#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_do_not_wait_out_a_dead_holders_lock_past_the_tokens_life() {
    let redis = Redis::start();
    let (upstream, idp) = linked();
    *idp.state.expires_in.lock().unwrap() = Some(2);
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir, "key", 13);
    let sidecar = long_lock_sidecar(&upstream, &idp, &redis, &key).await;
    let keys = redis.command(&["KEYS", "mcp-sidecar:*:state"]).unwrap();
    let lock_key = keys.lines().last().unwrap().replace(":state", ":lock");
    let before = idp.state.grant_count("client_credentials");
    // A holder that took the lock and was killed: it stands for 10 s.
    assert_eq!(
        redis
            .command(&["SET", &lock_key, "dead-host/pid-1 0123", "PX", "10000"])
            .as_deref(),
        Some("+OK")
    );
    // Past the token's life: the refresh ahead of expiry has been waiting for the lock.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let started = std::time::Instant::now();
    assert_eq!(echo(&sidecar, 2).await, 200);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "the call waited {:?} for a dead holder's lock",
        started.elapsed()
    );
    // One token request for the taken-over lock; the 2 s token it brings may itself be renewed
    // ahead of expiry before the call (2.5 s later), so a second one is the schedule, not a herd.
    let grants = idp.state.grant_count("client_credentials") - before;
    assert!((1..=2).contains(&grants), "{grants} token requests");
}

/// A holder whose token request is slow has its lock taken over (client credentials, its
/// waiter's token expiring); the waiter's token is stored first. When the slow holder's answer
/// finally comes it must not write its own token over the newer state: it reads the store and
/// takes the waiter's. (The mock upstream takes only the token issued last, the waiter's: an
/// overwrite shows as a rejected call and one more token request.)
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_holder_whose_lock_was_taken_over_does_not_overwrite_the_newer_state() {
    let redis = Redis::start();
    let (upstream, idp) = linked();
    *idp.state.expires_in.lock().unwrap() = Some(2);
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir, "key", 17);
    let mut fleet = Vec::new();
    for _ in 0..2 {
        fleet.push(long_lock_sidecar(&upstream, &idp, &redis, &key).await);
    }
    assert_eq!(idp.state.grant_count("client_credentials"), 1);
    let before = idp.state.grant_count("client_credentials");
    // The tokens of the next round outlive the test. The first refresh ahead of expiry (either
    // sidecar's) is answered by the server, but its reply hangs.
    *idp.state.expires_in.lock().unwrap() = Some(120);
    idp.state.hold_reply.store(true, Ordering::SeqCst);
    poll(
        || async { Some(idp.state.held.load(Ordering::SeqCst)) },
        |n| *n >= 1,
    )
    .await
    .expect("a refresh reached the server");
    idp.state.hold_reply.store(false, Ordering::SeqCst);
    // The other sidecar's token can no longer be sent: it takes the lock over, and its token
    // request (answered at once) is stored.
    poll(
        || async { Some(idp.state.grant_count("client_credentials")) },
        |n| *n > before,
    )
    .await
    .expect("the waiter took the lock over and got a token");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Now the slow holder's answer arrives.
    idp.state.release.notify_waiters();
    poll(
        || async { Some(idp.state.grant_count("client_credentials")) },
        |n| *n >= before + 2,
    )
    .await
    .expect("the slow holder got its answer");
    // Three store checks: an overwrite would have been adopted by the other sidecar by now.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for (i, sidecar) in fleet.iter().enumerate() {
        assert_eq!(echo(sidecar, 10 + i as u64).await, 200);
    }
    assert_eq!(
        idp.state.grant_count("client_credentials"),
        before + 2,
        "the slow holder's token replaced the newer one in the store"
    );
}

/// The slow holder learns that its lock was taken over even before the sidecar that took it
/// has stored anything: its answer is then neither installed nor written (the store keeps the
/// exact bytes it had), so it cannot race the new holder's write.
#[tokio::test(flavor = "multi_thread")]
async fn a_holder_that_sees_its_lock_taken_over_writes_nothing() {
    let redis = Redis::start();
    let (upstream, idp) = linked();
    *idp.state.expires_in.lock().unwrap() = Some(4);
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir, "key", 19);
    let sidecar = long_lock_sidecar(&upstream, &idp, &redis, &key).await;
    let keys = redis.command(&["KEYS", "mcp-sidecar:*:state"]).unwrap();
    let state_key = keys.lines().last().unwrap().to_string();
    let lock_key = state_key.replace(":state", ":lock");
    let before = idp.state.grant_count("client_credentials");
    // The refresh ahead of expiry (half the 4 s life) is answered, but the reply hangs.
    *idp.state.expires_in.lock().unwrap() = Some(120);
    idp.state.hold_reply.store(true, Ordering::SeqCst);
    poll(
        || async { Some(idp.state.held.load(Ordering::SeqCst)) },
        |n| *n >= 1,
    )
    .await
    .expect("the refresh reached the server");
    idp.state.hold_reply.store(false, Ordering::SeqCst);
    // Another sidecar takes the lock over (as `FleetStore::lock` does) and has not written yet.
    let stored = redis.command(&["GET", &state_key]).unwrap();
    assert_eq!(
        redis
            .command(&["SET", &lock_key, "other-host/pid-2 0123", "PX", "10000"])
            .as_deref(),
        Some("+OK")
    );
    idp.state.release.notify_waiters();
    poll(
        || async { Some(idp.state.grant_count("client_credentials")) },
        |n| *n > before,
    )
    .await
    .expect("the slow answer arrived");
    // Well before this sidecar's own token can no longer be sent (3 s into its life) and it
    // may take the lock over in turn.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        redis.command(&["GET", &state_key]).unwrap(),
        stored,
        "the slow holder wrote over a lock it no longer held"
    );
    // Later it takes the other's lock over itself (its token expiring) and carries on.
    let answered = poll(|| async { Some(echo(&sidecar, 2).await) }, |s| *s == 200).await;
    assert_eq!(answered, Some(200));
}

/// A store that keeps being re-seeded (here: re-seeded entries of the same state written back
/// one after the other, as a co-tenant of the shared Redis replaying what it saw could) never
/// settles.
/// The refresh that waits for it must end after four settling times with a temporary error
/// naming the cause, not hold the call forever; and it spends no refresh token meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_re_seeded_again_and_again_fails_the_refresh_instead_of_holding_it() {
    let redis = std::sync::Arc::new(Redis::start());
    let (upstream, idp) = linked();
    *idp.state.expires_in.lock().unwrap() = Some(120);
    let seed = canary();
    idp.state.insert_refresh_token(&seed, "mcp:tools");
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(&dir, "key", 23);
    let sidecar = Sidecar::start(&[
        ("UPSTREAM_URL", &upstream.url()),
        ("CLIENT_ID", CLIENT_ID),
        ("REFRESH_TOKEN", &seed),
        ("TOKEN_URL", &idp.url("/token")),
        ("STATE_STORE", &redis.url()),
        ("STATE_KEY_FILE", &key),
        ("STATE_DIR", "/proc/not-writable"),
    ])
    .await;
    sidecar.wait_reason("ready").await;
    assert_eq!(echo(&sidecar, 1).await, 200);
    let keys = redis.command(&["KEYS", "mcp-sidecar:*:state"]).unwrap();
    let state_key = keys.lines().last().unwrap().to_string();
    // Eight re-seeds of the held state: Redis emptied again and again, the sidecar puts it back
    // each time.
    let mut seeded = Vec::new();
    for _ in 0..8 {
        assert_eq!(redis.command(&["FLUSHALL"]).as_deref(), Some("+OK"));
        let entry = poll(
            || async { redis.command(&["GET", &state_key]) },
            |e| e.contains("msc1."),
        )
        .await
        .expect("re-seeded");
        // The bulk reply's header off: the sealed entry itself.
        let (_, value) = entry.split_once("\r\n").unwrap();
        seeded.push(value.to_string());
    }
    assert_ne!(seeded[0], seeded[1]);
    let turns = seeded.len();
    let refreshes = idp.state.grant_count("refresh_token");
    // Written back one after the other, a new one every second: each read of the refresh
    // waiting for settling (1.5 s apart) finds another re-seed, and the cycle takes longer than
    // the refresh may wait.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let replayer = std::thread::spawn({
        let (redis, stop, state_key) = (redis.clone(), stop.clone(), state_key.clone());
        move || {
            let mut turn = 0;
            while !stop.load(Ordering::SeqCst) {
                redis.command(&["SET", &state_key, &seeded[turn % turns]]);
                turn += 1;
                std::thread::sleep(std::time::Duration::from_millis(1000));
            }
        }
    });
    // The upstream rejects the held token: the call needs a refresh, which waits for settling.
    upstream.state.set_token("rejected-now");
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), echo(&sidecar, 2)).await;
    let waited = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    replayer.join().unwrap();
    assert!(answer.is_ok(), "the call was held for {waited:?}");
    assert!(
        waited >= std::time::Duration::from_secs(5),
        "the refresh gave up after {waited:?}, before four settling times: {:?} {}",
        answer,
        status(&sidecar).await
    );
    let error = status(&sidecar).await["token"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("re-seeded again and again"), "{error}");
    assert!(!error.contains("canary"), "{error}");
    assert_eq!(idp.state.grant_count("refresh_token"), refreshes);
    assert_eq!(idp.state.invalid_grants.load(Ordering::SeqCst), 0);
}
