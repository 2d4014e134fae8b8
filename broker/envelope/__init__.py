"""Client-side envelope encryption over the broker (docs/envelope.md): large data is encrypted locally under a data
key the KMS makes and wraps; the KMS sees one call per data key.

    from broker.client import BrokerClient
    from broker.envelope import CacheLimits, Envelope, KmsDataKeys

    env = Envelope(KmsDataKeys(BrokerClient()), cache=CacheLimits(max_age=300, max_messages=10_000))
    message = env.encrypt(b"...", "alias/billing", {"app": "billing"})
    assert env.decrypt(message, {"app": "billing"}) == b"..."
"""

from broker.envelope.codec import Envelope
from broker.envelope.keys import CacheLimits, DataKeys, DataKeySource, KmsDataKeys
from broker.envelope.message import MessageError

__all__ = ["CacheLimits", "DataKeySource", "DataKeys", "Envelope", "KmsDataKeys", "MessageError"]
