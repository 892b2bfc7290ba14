//! Torsos: observation to features.

use tch::nn::{self, Module};
use tch::Tensor;

use crate::config::{Activation, ModelConfig, TorsoKind};
use crate::spaces::ObservationSpace;

pub(super) enum Torso {
    Mlp {
        layers: Vec<nn::Linear>,
        activation: Activation,
    },
    Conv {
        convs: Vec<nn::Conv2D>,
        dense: nn::Linear,
        channels_last: bool,
    },
    Impala {
        stages: Vec<ImpalaStage>,
        dense: nn::Linear,
        channels_last: bool,
    },
}

pub(super) struct ImpalaStage {
    conv: nn::Conv2D,
    res: [[nn::Conv2D; 2]; 2],
}

/// `(C, H, W)` of an image observation, or an error naming what is wrong.
fn image_shape(obs: &ObservationSpace, channels_last: bool) -> Result<(i64, i64, i64), String> {
    match (obs.shape.as_slice(), channels_last) {
        ([c, h, w], false) | ([h, w, c], true) => Ok((*c as i64, *h as i64, *w as i64)),
        _ => Err(format!(
            "a conv torso needs a 3-D image observation ({}), got shape {:?}",
            if channels_last { "[H, W, C]" } else { "[C, H, W]" },
            obs.shape
        )),
    }
}

/// Output size of a valid (unpadded) convolution.
fn conv_out(size: i64, kernel: i64, stride: i64) -> i64 {
    (size - kernel) / stride + 1
}

impl Torso {
    /// Builds the torso for `obs`, with `extra` more input floats per column (the agent
    /// one-hot: into the first layer of an MLP, beside the conv features into the dense layer of
    /// a conv torso); returns it and its feature width. `mlp` builds an MLP whatever the config.
    pub(super) fn new(
        path: nn::Path<'_>,
        obs: &ObservationSpace,
        extra: i64,
        m: &ModelConfig,
        mlp: bool,
    ) -> Result<(Torso, i64), String> {
        let kind = if mlp { TorsoKind::Mlp } else { m.torso };
        match kind {
            TorsoKind::Mlp => {
                let lp = &path / "layers";
                let mut width = obs.size() as i64 + extra;
                let mut layers = Vec::new();
                for (i, &h) in m.hidden_sizes.iter().enumerate() {
                    layers.push(nn::linear(&lp / i, width, h as i64, Default::default()));
                    width = h as i64;
                }
                Ok((
                    Torso::Mlp {
                        layers,
                        activation: m.activation,
                    },
                    width,
                ))
            }
            TorsoKind::NatureCnn | TorsoKind::Cnn => {
                let (channels, kernels, strides, dense_size) = if m.torso == TorsoKind::NatureCnn {
                    (vec![32, 64, 64], vec![8, 4, 3], vec![4, 2, 1], 512)
                } else {
                    (
                        m.conv_channels.clone(),
                        m.conv_kernels.clone(),
                        m.conv_strides.clone(),
                        m.dense_size,
                    )
                };
                let (mut c, mut h, mut w) = image_shape(obs, m.channels_last)?;
                let cp = &path / "convs";
                let mut convs = Vec::new();
                for (i, ((&out, &k), &s)) in channels.iter().zip(&kernels).zip(&strides).enumerate() {
                    let (k, s) = (k as i64, s as i64);
                    if h < k || w < k {
                        return Err(format!(
                            "conv layer {i} ({k}x{k}, stride {s}) does not fit a {h}x{w} input (observation shape {:?})",
                            obs.shape
                        ));
                    }
                    let cfg = nn::ConvConfig {
                        stride: s,
                        ..Default::default()
                    };
                    convs.push(nn::conv2d(&cp / i, c, out as i64, k, cfg));
                    c = out as i64;
                    h = conv_out(h, k, s);
                    w = conv_out(w, k, s);
                }
                let dense = nn::linear(
                    &path / "dense",
                    c * h * w + extra,
                    dense_size as i64,
                    Default::default(),
                );
                Ok((
                    Torso::Conv {
                        convs,
                        dense,
                        channels_last: m.channels_last,
                    },
                    dense_size as i64,
                ))
            }
            TorsoKind::ImpalaResnet => {
                let (mut c, mut h, mut w) = image_shape(obs, m.channels_last)?;
                let same = nn::ConvConfig {
                    padding: 1,
                    ..Default::default()
                };
                let sp = &path / "stages";
                let mut stages = Vec::new();
                for (i, &out) in m.impala_channels.iter().enumerate() {
                    let out = out as i64;
                    let p = &sp / i;
                    let conv = nn::conv2d(&p / "conv", c, out, 3, same);
                    let block = |r: usize| {
                        let rp = &p / format!("res{r}");
                        [
                            nn::conv2d(&rp / "conv0", out, out, 3, same),
                            nn::conv2d(&rp / "conv1", out, out, 3, same),
                        ]
                    };
                    stages.push(ImpalaStage {
                        conv,
                        res: [block(0), block(1)],
                    });
                    c = out;
                    // max-pool 3x3, stride 2, padding 1.
                    h = (h + 1) / 2;
                    w = (w + 1) / 2;
                }
                let dense = nn::linear(
                    &path / "dense",
                    c * h * w + extra,
                    m.dense_size as i64,
                    Default::default(),
                );
                Ok((
                    Torso::Impala {
                        stages,
                        dense,
                        channels_last: m.channels_last,
                    },
                    m.dense_size as i64,
                ))
            }
        }
    }

    /// `x`: float `[M, obs...]` (and `extra` `[M, E]`) to features `[M, F]`.
    pub(super) fn forward(&self, x: &Tensor, extra: Option<&Tensor>) -> Tensor {
        let with_extra = |h: Tensor| match extra {
            Some(e) => Tensor::cat(&[&h, e], -1),
            None => h,
        };
        match self {
            Torso::Mlp { layers, activation } => {
                let mut h = with_extra(x.flatten(1, -1));
                for l in layers {
                    h = l.forward(&h);
                    h = match activation {
                        Activation::Relu => h.relu(),
                        Activation::Tanh => h.tanh(),
                    };
                }
                h
            }
            Torso::Conv {
                convs,
                dense,
                channels_last,
            } => {
                let mut h = chw(x, *channels_last);
                for c in convs {
                    h = c.forward(&h).relu();
                }
                dense.forward(&with_extra(h.flatten(1, -1))).relu()
            }
            Torso::Impala {
                stages,
                dense,
                channels_last,
            } => {
                let mut h = chw(x, *channels_last);
                for s in stages {
                    h = s.conv.forward(&h).max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
                    for [c0, c1] in &s.res {
                        let r = c1.forward(&c0.forward(&h.relu()).relu());
                        h += r;
                    }
                }
                dense.forward(&with_extra(h.relu().flatten(1, -1))).relu()
            }
        }
    }
}

fn chw(x: &Tensor, channels_last: bool) -> Tensor {
    if channels_last {
        x.permute([0, 3, 1, 2]).contiguous()
    } else {
        x.shallow_clone()
    }
}
