"""The Azaion key hierarchy (docs/encryption.md). Every derived key is registered with
the log redactor the moment it exists."""

from azaion_training.logs import register_secret
from azaion_training.security.crypto import calc_hash
from azaion_training.settings import Settings, require_secret


def hardware_hash(hardware: str) -> str:
    return calc_hash(f"Azaion_{hardware}_%$$$)0_")


def api_transport_key(email: str, password: str, hw_hash: str) -> str:
    """The per-user, per-machine key that protects what `/resources/get/{folder}` returns."""
    key = calc_hash(f"{email}-{password}-{hw_hash}-#%@AzaionKey@%#---")
    register_secret(key)
    return key


def model_key(settings: Settings) -> str:
    """calc_hash(MODEL_ENCRYPTION_KEY): the key string every published model is encrypted with."""
    key = calc_hash(require_secret(settings.security.model_encryption_key, "MODEL_ENCRYPTION_KEY"))
    register_secret(key)
    return key
