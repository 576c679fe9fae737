"""GET /api/v2/me: who the token says the caller is."""


class MeResource:
    def on_get(self, req, resp):
        resp.media = req.context.user.serialize()


def add_routes(app):
    app.add_route("/api/v2/me", MeResource())
