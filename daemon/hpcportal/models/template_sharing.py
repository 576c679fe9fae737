"""What users add to the template catalog besides files: favourites and proposals.

A favourite is one row per (user, template id), so every head node answers the
same ``favourite`` flag. A proposal asks administrators to copy one version of
a user's own template into ``community/``; it keeps the outcome (and the reason
of a refusal) for the proposer to read.
"""

import peewee

from .base import BaseModel, JSONField, utcnow


class TemplateFavourite(BaseModel):
    user = peewee.CharField(max_length=64)
    template_id = peewee.CharField(max_length=255)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "template_favourites"
        indexes = ((("user", "template_id"), True),)


class TemplateProposal(BaseModel):
    proposer = peewee.CharField(max_length=64, index=True)
    template_id = peewee.CharField(max_length=255)
    version = peewee.CharField(max_length=128)
    name = peewee.CharField(max_length=255)
    # The proposed file's text as it was when proposed: later edits do not slip in.
    text = peewee.TextField()
    community_id = peewee.CharField(max_length=255)
    # pending, approved or rejected
    status = peewee.CharField(max_length=16, default="pending", index=True)
    reason = peewee.TextField(null=True)
    decided_by = peewee.CharField(max_length=64, null=True)
    decided_at = peewee.DateTimeField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    detail = JSONField(null=True)

    class Meta:
        table_name = "template_proposals"


FAVOURITE_MODELS = [TemplateFavourite]
PROPOSAL_MODELS = [TemplateProposal]
MODELS = [*FAVOURITE_MODELS, *PROPOSAL_MODELS]
