"""hub.ingest: every device message on its way in, from the socket or the serial line to the outbox.

The MQTT gateway and the driver host decode what devices send; `Intake` turns validated messages into
records and stores them in one call per batch; the device registry and device alerts follow each
device's health; scans are classified; rate limits keep one flooding device from starving the rest.
"""

from hub.ingest.device_alerts import DeviceAlerts
from hub.ingest.devices import DeviceRegistry
from hub.ingest.driver_host import DriverHost
from hub.ingest.gateway import MqttGateway
from hub.ingest.intake import Intake
from hub.ingest.ratelimit import RateLimiter
from hub.ingest.scans import ScanClassifier, ScanRecorder

__all__ = [
    "DeviceAlerts",
    "DeviceRegistry",
    "DriverHost",
    "Intake",
    "MqttGateway",
    "RateLimiter",
    "ScanClassifier",
    "ScanRecorder",
]
