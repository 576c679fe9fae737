"""Users' favourite templates, kept in the database (every head node agrees)."""

import peewee

from ..models.template_sharing import TemplateFavourite


class Favourites:
    def __init__(self, database):
        self._database = database

    def ids(self, user_name):
        """The template ids ``user_name`` marked, as a set."""
        query = TemplateFavourite.select(TemplateFavourite.template_id).where(TemplateFavourite.user == user_name)
        return {template_id for (template_id,) in query.tuples()}

    def add(self, user_name, template_id):
        try:
            with self._database.atomic():
                TemplateFavourite.create(user=user_name, template_id=template_id)
        except peewee.IntegrityError:
            pass  # marked already (PUT is idempotent)

    def remove(self, user_name, template_id):
        (TemplateFavourite.delete()
         .where((TemplateFavourite.user == user_name) & (TemplateFavourite.template_id == template_id))
         .execute())

    def forget(self, template_id):
        """A template that is gone for good is nobody's favourite any more."""
        TemplateFavourite.delete().where(TemplateFavourite.template_id == template_id).execute()
