"""Who may do what in the object store: one credential per service and the policy it is held to.

The object-storage rows of docs/security.md, in one place:

- ``reco-trainer`` reads the bucket and writes (puts, deletes) under ``models/`` and
  ``snapshots/`` only (artifacts and topic snapshots, :class:`reco_common.contracts.ObjectLayout`);
- ``reco-controller`` and ``reco-worker`` read the bucket, and write nothing;
- the API has no object-storage credential at all.

:func:`bucket_policy` is the S3 bucket policy with these grants, principals named by access key
as VersityGW's internal IAM names its users (the local stack, ``scripts/stack/s3/policy.json``);
:func:`identity_policy` is the same grants as one service's IAM identity policy (AWS, the
manifests: ``deploy/k8s/overlays/prod/iam/<principal>.json``). Unit tests keep the files equal.
"""

from __future__ import annotations

import enum
import json
from typing import Any, Final

from reco_common.contracts import ObjectLayout

DEV_PASSWORD_SUFFIX: Final = "-dev-secret"
_READ: Final = ("s3:GetObject", "s3:ListBucket")
_WRITE: Final = ("s3:PutObject", "s3:DeleteObject")


class StoragePrincipal(enum.StrEnum):
    """The object-store users (their access key ids in the local stack)."""

    TRAINER = "reco-trainer"
    CONTROLLER = "reco-controller"
    WORKER = "reco-worker"

    @property
    def dev_secret(self) -> str:
        """The local stack's secret key of this user (a placeholder, refused outside dev)."""
        return f"{self.value}{DEV_PASSWORD_SUFFIX}"

    @property
    def writes(self) -> tuple[str, ...]:
        """The key prefixes this principal may write under (none: read-only)."""
        if self is StoragePrincipal.TRAINER:
            return (f"{ObjectLayout.MODELS}/", f"{ObjectLayout.SNAPSHOTS}/")
        return ()


def _statements(bucket: str, principal: StoragePrincipal) -> list[dict[str, Any]]:
    arn = f"arn:aws:s3:::{bucket}"
    found: list[dict[str, Any]] = [
        {"Effect": "Allow", "Action": list(_READ), "Resource": [arn, f"{arn}/*"]}
    ]
    if principal.writes:
        resources = [f"{arn}/{prefix}*" for prefix in principal.writes]
        found.append({"Effect": "Allow", "Action": list(_WRITE), "Resource": resources})
    return found


def bucket_policy(bucket: str) -> dict[str, Any]:
    """The bucket policy granting every principal its rights, principals by access key."""
    statements = []
    for principal in StoragePrincipal:
        for n, statement in enumerate(_statements(bucket, principal)):
            sid = f"{principal.value.replace('-', '')}{n}"
            statements.append({"Sid": sid, "Principal": {"AWS": [principal.value]}, **statement})
    return {"Version": "2012-10-17", "Statement": statements}


def identity_policy(bucket: str, principal: StoragePrincipal) -> dict[str, Any]:
    """The IAM identity policy of ``principal``'s role or user (AWS and the like)."""
    return {"Version": "2012-10-17", "Statement": _statements(bucket, principal)}


def render(policy: dict[str, Any]) -> str:
    """A policy as the files hold it (stable key order, two-space indents, final newline)."""
    return json.dumps(policy, indent=2) + "\n"
