"""PySyft 0.2's federated-learning helpers, for code ported from its tutorials.

=================================================  =====================================================
PySyft 0.2                                         lightning_fed
=================================================  =====================================================
``syft.federated.floptimizer.Optims``              :class:`lightning_fed.fl.Optims`
``syft.frameworks.torch.fl.utils.federated_avg``   :func:`lightning_fed.fl.federated_avg`
``syft.frameworks.torch.fl.utils.add_model``       :func:`lightning_fed.fl.add_model`
``syft.frameworks.torch.fl.utils.scale_model``     :func:`lightning_fed.fl.scale_model`
``syft.frameworks.torch.fl.utils.accuracy``        :func:`lightning_fed.fl.accuracy`
=================================================  =====================================================

With Lightning, ``FederatedStrategy`` does all of this itself (per-worker optimizer state, FedAvg in float64).
"""

from lightning_fed.fl.optims import Optims
from lightning_fed.fl.utils import accuracy, add_model, federated_avg, scale_model

__all__ = ["Optims", "accuracy", "add_model", "federated_avg", "scale_model"]
