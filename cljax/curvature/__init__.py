"""Curvature tools: Hessian / GGN-vector products, Lanczos, traces (Hutchinson, Hutch++, GGN split),
spectral density, and the structured curvature blocks (diagonal, Kronecker-factored) that the
quadratic penalty and NCL hold (:mod:`cljax.curvature.structured`).

See REFERENCES.md "Curvature and the forgetting bound". Every product is of the *mean* task loss.
"""
from cljax.curvature.density import (
                                     SpectralDensity,
                                     gaussian_density,
                                     slq_nodes_weights,
                                     spectral_density,
)
from cljax.curvature.hvp import (
                                     chunk_batch,
                                     ggn_vp,
                                     hvp,
                                     make_task_loss,
                                     make_task_matvec,
                                     softmax_cross_entropy,
                                     task_ggn_vp,
                                     task_hvp,
                                     task_loss,
                                     task_value_and_grad,
)
from cljax.curvature.lanczos import (
                                     EigenResult,
                                     LanczosResult,
                                     lanczos,
                                     top_eigenvalues,
                                     top_eigenvalues_matvec,
                                     tridiagonal_eigh,
)
from cljax.curvature.structured import (
                                     Curvature,
                                     Diagonal,
                                     KroneckerFactored,
                                     combine,
                                     damped_inverse,
                                     diagonal,
                                     identity,
                                     kronecker_factored,
                                     matvec,
                                     matvec_sum,
                                     nearest_kronecker_sum,
                                     quadratic_form,
                                     zeros,
)
from cljax.curvature.trace import TraceEstimate, ggn_split_trace, hutchinson_trace, hutchpp_trace

__all__ = [
    "hvp", "ggn_vp", "softmax_cross_entropy", "chunk_batch", "task_loss", "task_value_and_grad",
    "task_hvp", "task_ggn_vp", "make_task_loss", "make_task_matvec",
    "lanczos", "tridiagonal_eigh", "top_eigenvalues", "top_eigenvalues_matvec", "LanczosResult",
    "EigenResult", "hutchinson_trace", "hutchpp_trace", "ggn_split_trace",
    "TraceEstimate", "spectral_density", "slq_nodes_weights",
    "gaussian_density", "SpectralDensity",
    "Diagonal", "KroneckerFactored", "Curvature", "diagonal", "kronecker_factored", "zeros",
    "identity", "nearest_kronecker_sum", "combine", "matvec", "matvec_sum", "quadratic_form",
    "damped_inverse",
]
