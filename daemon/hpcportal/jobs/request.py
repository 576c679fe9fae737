"""The JSON types of a submit body's fields, checked before any value is looked at.

A field of the wrong type (``templateId`` as an object, ``parameters`` as a
list) is a 400 naming the field, never a 500 from code that trusted its type.
The values themselves are checked where they are used.
"""

_STRING = (str,)
_NUMBER_OR_TEXT = (int, float, str)

# field: (accepted Python types of the decoded JSON, what the answer says)
FIELD_TYPES = {
    "jobName": (_STRING, "must be a string"),
    "partition": (_STRING, "must be a string"),
    "account": (_STRING, "must be a string"),
    "qos": (_STRING, "must be a string"),
    "nodes": (_NUMBER_OR_TEXT, "must be a whole number"),
    "cpus": (_NUMBER_OR_TEXT, "must be a whole number"),
    "gpus": (_NUMBER_OR_TEXT, "must be a whole number"),
    "memory": (_NUMBER_OR_TEXT, "must be a size such as 16G or a number of megabytes"),
    "time": (_NUMBER_OR_TEXT, "must be a time such as 01:00:00 or a number of minutes"),
    "script": (_STRING, "must be a string"),
    "jobId": (_STRING, "must be a string"),
    "files": ((list,), "must be a list of files"),
    "fileIds": ((list,), "must be a list of file ids"),
    "apptainerImage": ((dict,), "must be an object with the image's id"),
    "templateId": (_STRING, "must be a string (a template's id)"),
    "templateVersion": (_STRING, "must be a string (a template version such as 1.2.0)"),
    "parameters": ((dict,), "must be an object of name: value"),
}


def type_errors(body):
    """``{field: reason}`` for every field of ``body`` whose JSON type is wrong
    (null and absent are left to the value checks: a field may be optional)."""
    errors = {}
    for field, (types, reason) in FIELD_TYPES.items():
        value = body.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            if field == "apptainerImage" and value == "":
                continue  # the dashboard sends "" for "no image"
            errors[field] = reason
    return errors
