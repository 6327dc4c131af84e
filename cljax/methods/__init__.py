"""CL methods as small recipes for :func:`cljax.training.run_stream` (see :mod:`.base`).

``get_method(name, **options)`` builds a method registered in :mod:`.registry`; ``options`` are
its static settings (e.g. ``fisher="true"``, ``num_examples=2048``); hyperparameters such as λ
live in ``hparams``.
"""
from cljax.methods.base import (
    BatchContext,
    BoundaryContext,
    Clock,
    LossContext,
    Method,
    PredictContext,
    StepInfo,
    StreamSpec,
    all_tasks_batch,
    base_model,
    base_only,
    check_hparams,
    cross_entropy,
    current_task_batch,
    get_hparam,
    keep_after_step,
    keep_state,
    no_optimizer_args,
    no_state,
    task_loss,
    union_batch,
)
from cljax.methods.baselines import joint, joint_offline, none, whole_stream_batch
from cljax.methods.bir import bir
from cljax.methods.generative_replay import dgr, dgr_distill
from cljax.methods.hat import hat
from cljax.methods.mcsgd import mcsgd
from cljax.methods.natural import kfac_ewc, ncl, ncl_kfac
from cljax.methods.orthog import orthog
from cljax.methods.packnet import packnet
from cljax.methods.penalties import ewc, l2, mas, online_ewc, rwalk, si
from cljax.methods.pnn import pnn
from cljax.methods.projection import gpm, ogd, rgo, rgo2
from cljax.methods.registry import METHODS, MethodDescription, describe_method, get_method
from cljax.methods.rehearsal import agem, der, derpp, er, gem, icarl, lwf
from cljax.methods.remind import remind
from cljax.methods.rtf import rtf
from cljax.methods.sleep import src
from cljax.methods.vcl import vcl

__all__ = ["Method", "StreamSpec", "Clock", "BatchContext", "LossContext", "StepInfo",
           "BoundaryContext", "PredictContext", "METHODS", "get_method", "no_state",
           "current_task_batch", "all_tasks_batch", "union_batch", "cross_entropy", "task_loss",
           "no_optimizer_args", "keep_after_step", "keep_state", "base_only", "base_model",
           "get_hparam", "none", "joint", "joint_offline", "whole_stream_batch", "ewc",
           "online_ewc", "si", "mas", "l2", "rwalk", "kfac_ewc", "ncl", "ncl_kfac", "er", "agem", "gem",
           "lwf", "der", "derpp", "icarl", "remind", "rgo", "rgo2", "gpm", "ogd", "orthog", "mcsgd", "pnn", "hat",
           "packnet", "vcl", "dgr", "dgr_distill", "rtf", "bir", "src", "check_hparams", "describe_method",
           "MethodDescription"]
