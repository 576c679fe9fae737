"""Sharing one's template with everyone: proposals to ``community/``, reviewed by administrators.

A user proposes one version of their own template; the proposal keeps its
text as it was then, so later edits do not slip past the review. An
administrator approves it (the text, with the proposer as ``maintainer``, is
written as ``community/<local id>/<version>.yaml`` and indexed at once) or
rejects it with a reason. The outcome stays on the proposal, which its
proposer can read (``GET /api/v2/templates/proposals``), and the proposer is
told through ``notify(user, key, title, message, data)``: the portal's builder
records a ``template.proposal`` notification with it.
"""

import logging

import yaml

from ..errors import Conflict, NotFound, PermissionDenied, ValidationError
from ..models.base import isoformat, utcnow
from ..models.template_sharing import TemplateProposal
from . import templates as tpl
from .my_templates import problems_error, to_yaml
from .template_catalog import KIND, MAX_TEMPLATE_BYTES
from .template_files import read_user_file, write_shared

log = logging.getLogger("hpcportal.catalog.templates")

COMMUNITY = "community"
STATUSES = ("pending", "approved", "rejected")
MAX_REASON = 2000


def serialize(row):
    return {
        "id": row.id,
        "template_id": row.template_id,
        "version": row.version,
        "name": row.name,
        "proposer": row.proposer,
        "community_id": row.community_id,
        "status": row.status,
        "reason": row.reason,
        "decided_by": row.decided_by,
        "decided_at": isoformat(row.decided_at),
        "created_at": isoformat(row.created_at),
        "message": (row.detail or {}).get("message"),
        "yaml": row.text,
    }


class Proposals:
    """``catalog``: the TemplateCatalog; ``indexer``: indexes approved files at once;
    ``root``: the templates folder; ``notify``: tells a proposer the outcome, or None."""

    def __init__(self, catalog, indexer, root, notify=None):
        self._catalog = catalog
        self._indexer = indexer
        self._root = root
        self._notify = notify

    def propose(self, user, template_id, version=None, message=None):
        template = self._catalog.get(user, template_id, version=version)
        if template["owner"] != user.name:
            raise PermissionDenied(f"{template_id} is not one of your templates; only your own can be "
                                   f"proposed for the community.", code="not_your_template")
        if message is not None and (not isinstance(message, str) or len(message) > MAX_REASON):
            raise ValidationError(f"'message' must be text of at most {MAX_REASON} characters.",
                                  errors={"message": f"at most {MAX_REASON} characters"})
        local_id = template_id.rsplit(".", 1)[1]
        community_id = tpl.template_id(COMMUNITY, local_id)
        if template["version"] in self._community_versions(community_id):
            raise Conflict(f"{community_id} has a version {template['version']} already; propose a "
                           f"newer version.", code="template_version_exists")
        pending = TemplateProposal.select().where(
            (TemplateProposal.template_id == template_id) & (TemplateProposal.version == template["version"])
            & (TemplateProposal.status == "pending")).first()
        if pending is not None:
            raise Conflict(f"{template_id} {template['version']} is proposed already (proposal {pending.id}).",
                           code="proposal_pending", extra={"proposal": serialize(pending)})
        relpath = dict(self._catalog.versions_of(template_id))[template["version"]]
        text = read_user_file(self._root, relpath, MAX_TEMPLATE_BYTES + 1).decode("utf-8")
        row = TemplateProposal.create(
            proposer=user.name, template_id=template_id, version=template["version"], name=template["name"],
            text=text, community_id=community_id, detail={"message": message} if message else None)
        return serialize(row)

    def list(self, user, status=None):
        """Administrators see every proposal; a user their own. Newest first."""
        if status is not None and status not in STATUSES:
            raise ValidationError(f"'status' is one of {', '.join(STATUSES)}.",
                                  errors={"status": f"one of {', '.join(STATUSES)}"})
        query = TemplateProposal.select()
        if not user.admin:
            query = query.where(TemplateProposal.proposer == user.name)
        if status:
            query = query.where(TemplateProposal.status == status)
        return [serialize(row) for row in query.order_by(TemplateProposal.id.desc())]

    def get(self, user, proposal_id):
        return serialize(self._row(user, proposal_id))

    def approve(self, admin, proposal_id):
        row = self._pending(admin, proposal_id)
        document = yaml.safe_load(row.text)
        local_id = row.community_id.split(".", 1)[1]
        document = {"id": local_id, **{k: v for k, v in document.items() if k != "id"},
                    "maintainer": row.proposer}
        text = to_yaml(document)
        relpath = f"{local_id}/{row.version}.yaml"
        parsed = tpl.parse_template(text, f"{COMMUNITY}/{relpath}")
        if parsed.errors:
            raise problems_error("The proposed template is no longer valid; reject it.", parsed.errors)
        if row.version in self._community_versions(row.community_id):
            raise Conflict(f"{row.community_id} has a version {row.version} already.",
                           code="template_version_exists")
        write_shared(self._root, COMMUNITY, relpath, text)
        self._indexer.index_now(KIND, [f"{COMMUNITY}/{relpath}"])
        self._decide(row, admin, "approved", None)
        self._tell(row, f"Your template {row.name} is in the community catalog",
                   f"{admin.name} approved {row.template_id} {row.version}; everyone can use it now "
                   f"as {row.community_id}.")
        return serialize(row)

    def reject(self, admin, proposal_id, reason):
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
            raise ValidationError("A rejection needs a 'reason' (1 to 2000 characters) for the proposer.",
                                  errors={"reason": f"required, at most {MAX_REASON} characters"})
        row = self._pending(admin, proposal_id)
        self._decide(row, admin, "rejected", reason.strip())
        self._tell(row, f"Your template {row.name} was not added to the community catalog",
                   f"{admin.name} rejected {row.template_id} {row.version}: {row.reason}")
        return serialize(row)

    # -- helpers -----------------------------------------------------------------

    def _community_versions(self, community_id):
        return [version for version, _ in self._catalog.versions_of(community_id)]

    @staticmethod
    def _row(user, proposal_id):
        row = None
        if isinstance(proposal_id, str) and proposal_id.isdigit() and len(proposal_id) < 18:
            row = TemplateProposal.get_or_none(TemplateProposal.id == int(proposal_id))
        if row is None or not (user.admin or row.proposer == user.name):
            raise NotFound(f"There is no proposal {proposal_id}.", code="proposal_not_found")
        return row

    def _pending(self, admin, proposal_id):
        if not admin.admin:
            raise PermissionDenied("Only administrators review proposals.", code="admin_only")
        row = self._row(admin, proposal_id)
        if row.status != "pending":
            raise Conflict(f"Proposal {row.id} was {row.status} already.", code="proposal_decided",
                           extra={"proposal": serialize(row)})
        return row

    def _decide(self, row, admin, status, reason):
        # Only a pending row changes: two administrators deciding at once cannot both win.
        changed = (TemplateProposal.update(status=status, reason=reason, decided_by=admin.name,
                                           decided_at=utcnow())
                   .where((TemplateProposal.id == row.id) & (TemplateProposal.status == "pending")).execute())
        if not changed:
            raise Conflict(f"Proposal {row.id} was decided meanwhile.", code="proposal_decided")
        row.status, row.reason, row.decided_by = status, reason, admin.name
        row.decided_at = TemplateProposal.get_by_id(row.id).decided_at

    def _tell(self, row, title, message):
        if self._notify is None:
            return
        try:
            self._notify(row.proposer, f"template.proposal:{row.id}:{row.status}", title, message,
                         {"proposal": row.id, "template_id": row.template_id, "version": row.version,
                          "community_id": row.community_id, "reason": row.reason})
        except Exception:  # the outcome is on the proposal already; the notice is a courtesy
            log.exception("proposal %s: telling %s failed", row.id, row.proposer)
