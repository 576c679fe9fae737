"""All models, bound to a database at run time (never at import).

Each area keeps its models in its own module and lists them here.
"""

from . import audit, catalog, file_shares, jobs, notifications, template_sharing, templates, uploads, usage

ALL_MODELS = [*audit.MODELS, *catalog.MODELS, *templates.MODELS, *uploads.MODELS, *jobs.MODELS,
              *template_sharing.MODELS, *notifications.MODELS, *file_shares.MODELS, *usage.MODELS]


def bind(database):
    database.bind(ALL_MODELS, bind_refs=False, bind_backrefs=False)
