"""Data: tfds sources, task streams (split / permuted / rotated), CL scenarios, and the host
pipeline for streams larger than the device (:mod:`cljax.data.pipeline`)."""
from cljax.data import pipeline
from cljax.data.pipeline import PLACEMENTS, HostArrays, choose_placement, stream_bytes
from cljax.data.scenarios import SCENARIOS, TASK_HEADS, Scenario, make_scenario
from cljax.data.sources import ArrayDataset, load_split, resolve_data_dir
from cljax.data.streams import (
                                EVALUATION_SPLITS,
                                NORMALISATION,
                                STREAM_KINDS,
                                TaskArrays,
                                TaskStream,
                                carve_validation,
                                check_normalisation,
                                load_stream,
                                mirzadeh_rotation_angles,
                                permutations,
                                permuted_tasks,
                                rotate_images,
                                rotated_tasks,
                                split_tasks,
)

__all__ = ["ArrayDataset", "load_split", "resolve_data_dir", "TaskArrays", "TaskStream",
           "NORMALISATION", "STREAM_KINDS", "split_tasks", "permuted_tasks", "rotated_tasks",
           "permutations", "rotate_images", "mirzadeh_rotation_angles", "load_stream",
           "EVALUATION_SPLITS", "carve_validation", "check_normalisation",
           "SCENARIOS", "TASK_HEADS", "Scenario", "make_scenario", "pipeline", "PLACEMENTS", "HostArrays",
           "choose_placement", "stream_bytes"]
