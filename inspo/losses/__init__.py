"""DPO-family preference losses. Importing this package registers every loss in :data:`LOSSES`."""

from inspo.losses.aot import AOTLoss
from inspo.losses.aot_unpaired import AOTUnpairedLoss
from inspo.losses.apo_down import APODownLoss
from inspo.losses.apo_zero import APOZeroLoss
from inspo.losses.base import LOSSES, BetaLoss, LossOutput, PairLogps, PreferenceLoss, logratios, register_loss, sft_nll
from inspo.losses.bco import BCOPairLoss
from inspo.losses.discopop import DiscoPOPLoss
from inspo.losses.dpo import DPOLoss
from inspo.losses.exo import EXOPairLoss
from inspo.losses.hinge import HingeLoss
from inspo.losses.ipo import IPOLoss
from inspo.losses.nca import NCAPairLoss
from inspo.losses.onesided import OneSidedLoss
from inspo.losses.orpo import ORPOLoss
from inspo.losses.rdpo import RDPOLoss
from inspo.losses.robust import RobustDPOLoss
from inspo.losses.sft import SFTLoss
from inspo.losses.sigmoid_norm import SigmoidNormLoss
from inspo.losses.simpo import SimPOLoss
from inspo.losses.sppo import SPPOHardLoss
from inspo.losses.weighted import WeightedLoss

__all__ = [
    "LOSSES",
    "AOTLoss",
    "AOTUnpairedLoss",
    "APODownLoss",
    "APOZeroLoss",
    "BCOPairLoss",
    "BetaLoss",
    "DPOLoss",
    "DiscoPOPLoss",
    "EXOPairLoss",
    "HingeLoss",
    "IPOLoss",
    "LossOutput",
    "NCAPairLoss",
    "ORPOLoss",
    "OneSidedLoss",
    "PairLogps",
    "PreferenceLoss",
    "RDPOLoss",
    "RobustDPOLoss",
    "SFTLoss",
    "SPPOHardLoss",
    "SigmoidNormLoss",
    "SimPOLoss",
    "WeightedLoss",
    "logratios",
    "register_loss",
    "sft_nll",
]
