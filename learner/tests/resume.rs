//! A learner that resumes from a checkpoint continues exactly: given the same batches, the
//! weights after a checkpoint, a fresh process-like trainer and the rest of the updates are
//! bit-identical (on CPU) to an uninterrupted run's. Resuming from the weights alone (what a
//! restarted learner did before checkpoints held the optimizer) is not, which shows the check
//! can fail.

use actor::runner::EnvRunner;
use learner::batch::{Batch, Batcher};
use learner::checkpoint::{encode, newest_valid, Checkpointer};
use learner::ingest::{validate, RolloutSpec};
use learner::trainer::Trainer;
use tch::Device;
use troupe::model::{Model, ModelSpec};
use troupe::RunConfig;

const UPDATES: usize = 12;
const CUT: usize = 5;

fn config() -> RunConfig {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/cartpole.toml");
    // APPO with 4 epochs of 4 minibatches (the shuffles matter), observation normalisation, Adam.
    RunConfig::from_file(&root).unwrap()
}

/// The same batches every time: rollouts of a fixed random policy on seeded envs.
fn batches(config: &RunConfig) -> (ModelSpec, Vec<Batch>) {
    tch::manual_seed(11);
    let seeds: Vec<u64> = (0..config.actor.num_envs as u64).collect();
    let env = actor::envs::make(&config.env, &seeds, &[]).unwrap();
    let spec = ModelSpec {
        env: troupe::spaces::PolicySpec::single(env.spec()),
        model: config.model.clone(),
    };
    let acting = Model::new(&spec, Device::Cpu).unwrap();
    let mut runner = EnvRunner::single(env, config.actor.unroll_length, acting.state_size(), 5).unwrap();
    let rollout_spec = RolloutSpec {
        unroll_length: config.actor.unroll_length,
        env: spec.env.clone(),
        state_size: 0,
        max_envs: config.actor.num_envs,
        first_policy: true,
    };
    let mut batcher = Batcher::new(config.learner.batch_size);
    let mut out = Vec::new();
    while out.len() < UPDATES {
        for r in runner.unroll_one(&acting, 1, 1, &mut |_| {}).unwrap() {
            batcher.push(validate(&r, &rollout_spec, 1).unwrap());
        }
        while let Some(b) = batcher.next_batch() {
            out.push(b);
        }
    }
    out.truncate(UPDATES);
    (spec, out)
}

/// Every tensor of the policy, by name, as bytes (the file's header order is not fixed).
fn weights(t: &Trainer) -> Vec<(String, Vec<u8>)> {
    tensors(&t.model().to_safetensors())
}

fn tensors(blob: &[u8]) -> Vec<(String, Vec<u8>)> {
    let st = safetensors::SafeTensors::deserialize(blob).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    v.sort();
    v
}

#[test]
fn a_resumed_learner_is_bit_identical_to_an_uninterrupted_one() {
    tch::set_num_threads(1);
    let config = config();
    let (spec, batches) = batches(&config);

    tch::manual_seed(1);
    let mut whole = Trainer::new(&config, &spec, Device::Cpu).unwrap();
    for b in &batches {
        assert!(whole.update_batch(b).sgd_steps > 0);
    }

    tch::manual_seed(1);
    let mut first = Trainer::new(&config, &spec, Device::Cpu).unwrap();
    for b in &batches[..CUT] {
        first.update_batch(b);
    }
    first.version = 7;
    let dir = tempfile::tempdir().unwrap();
    let ckpt = Checkpointer::new(dir.path(), 2).unwrap();
    ckpt.write(first.version, &encode(&first.checkpoint())).unwrap();
    let state = first.checkpoint();
    drop(first);

    // A new trainer, initialised from another seed: everything must come from the checkpoint.
    tch::manual_seed(99);
    let mut resumed = Trainer::new(&config, &spec, Device::Cpu).unwrap();
    let loaded = newest_valid(dir.path()).unwrap().expect("the checkpoint");
    assert_eq!((loaded.version, loaded.learner_step), (7, CUT as u64));
    assert_eq!(loaded.frames, state.frames);
    resumed.restore(&loaded).unwrap();
    assert!(
        weights(&resumed) == tensors(&loaded.policy),
        "the restored weights are the checkpoint's"
    );
    for b in &batches[CUT..] {
        resumed.update_batch(b);
    }
    assert!(
        weights(&resumed) == weights(&whole),
        "the resumed run's weights differ from the uninterrupted run's"
    );
    assert_eq!(resumed.updates, whole.updates);
    assert_eq!(resumed.frames, whole.frames);

    // Weights alone (no optimizer state) do not continue the same run.
    tch::manual_seed(1);
    let mut weights_only = Trainer::new(&config, &spec, Device::Cpu).unwrap();
    weights_only
        .load(loaded.version, loaded.learner_step, loaded.frames, &loaded.policy)
        .unwrap();
    for b in &batches[CUT..] {
        weights_only.update_batch(b);
    }
    assert!(
        weights(&weights_only) != weights(&whole),
        "without the optimizer state the run should diverge"
    );
}
