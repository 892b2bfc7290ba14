//! An actor refuses a policy blob with a non-finite weight: it keeps acting with its current
//! weights and version, counts the refusal, does not retry that version, and takes the next
//! good one.

use actor::{ActingPolicy, PolicyUpdate};
use tch::{Device, Kind, Tensor};
use troupe::config::ModelConfig;
use troupe::model::{Model, ModelSpec};

fn spec() -> ModelSpec {
    ModelSpec {
        env: troupe::spaces::PolicySpec::single(&troupe::env::native_spec("CartPole-v1").unwrap()),
        model: ModelConfig::default(),
    }
}

fn poisoned(blob: &[u8], name: &str) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(blob).unwrap();
    let view = st.tensor(name).unwrap();
    let offset = view.data().as_ptr() as usize - blob.as_ptr() as usize;
    let mut bad = blob.to_vec();
    bad[offset + 4..offset + 8].copy_from_slice(&f32::INFINITY.to_le_bytes());
    bad
}

#[test]
fn a_non_finite_blob_is_refused_and_the_actor_keeps_its_policy() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tch::manual_seed(1);
        let mut net = Model::new(&spec(), Device::Cpu).unwrap();
        let v1 = Model::new(&spec(), Device::Cpu).unwrap().to_safetensors();
        let v3 = Model::new(&spec(), Device::Cpu).unwrap().to_safetensors();
        let mut acting = ActingPolicy::default();
        let offer = |acting: &mut ActingPolicy, net: &mut Model, version: u64, blob: &[u8]| {
            acting.offer(
                net,
                &PolicyUpdate {
                    version,
                    blob: bytes::Bytes::copy_from_slice(blob),
                },
            )
        };
        assert!(offer(&mut acting, &mut net, 1, &v1));
        let obs = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
        let state = net.initial_state(5);
        let before = tch::no_grad(|| net.act(&obs, &state).0);

        let bad = poisoned(&v3, "policy.encoder.torso.layers.1.weight");
        assert!(!offer(&mut acting, &mut net, 2, &bad), "refused");
        assert_eq!(acting.version, 1, "still acting with version 1");
        let after = tch::no_grad(|| net.act(&obs, &state).0);
        assert!(after.equal(&before), "the weights did not change");
        // Not retried on the next look at the same version.
        assert!(!offer(&mut acting, &mut net, 2, &bad));

        assert!(offer(&mut acting, &mut net, 3, &v3), "the next good version loads");
        assert_eq!(acting.version, 3);
        assert!(!tch::no_grad(|| net.act(&obs, &state).0).equal(&before));
    });
    let refused: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == troupe::telemetry::names::ACTOR_POLICIES_REFUSED)
        .map(|(_, _, _, v)| match v {
            metrics_util::debugging::DebugValue::Counter(c) => c,
            _ => 0,
        })
        .sum();
    assert_eq!(refused, 1, "one refusal counted (the retry is not a second one)");
}
