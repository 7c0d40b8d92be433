"""Lists every object on a SoftHSM token through python-pkcs11, a PKCS#11 binding independent of
the agent, as JSON: class, label, id, and for private keys whether the token lets the key out.

usage: python3 pkcs11_inspect.py MODULE TOKEN_LABEL PIN
"""
import json
import sys

import pkcs11
from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import AttributeSensitive, AttributeTypeInvalid

module, label, pin = sys.argv[1:4]
token = pkcs11.lib(module).get_token(token_label=label)
objects = []
with token.open(user_pin=pin) as session:
    for obj in session.get_objects():
        object_class = ObjectClass(obj[Attribute.CLASS])
        # Some tokens list their mechanisms as objects too; only keys, certificates and data matter.
        kinds = (ObjectClass.DATA, ObjectClass.PUBLIC_KEY, ObjectClass.PRIVATE_KEY, ObjectClass.CERTIFICATE)
        if object_class not in kinds:
            continue
        entry = {
            "class": object_class.name,
            "label": obj[Attribute.LABEL],
        }
        if object_class == ObjectClass.CERTIFICATE:
            entry["id"] = obj[Attribute.ID].hex()
        if object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            entry["id"] = obj[Attribute.ID].hex()
            for name in ("MODIFIABLE", "COPYABLE"):
                try:
                    entry[name.lower()] = bool(obj[getattr(Attribute, name)])
                except AttributeTypeInvalid:
                    pass
        if object_class == ObjectClass.DATA:
            entry["application"] = obj[Attribute.APPLICATION]
            entry["value"] = bytes(obj[Attribute.VALUE]).decode()
        if object_class == ObjectClass.PRIVATE_KEY:
            for name in ("SENSITIVE", "EXTRACTABLE", "TOKEN", "PRIVATE", "SIGN", "DECRYPT", "ALWAYS_AUTHENTICATE"):
                try:
                    entry[name.lower()] = bool(obj[getattr(Attribute, name)])
                except AttributeTypeInvalid:
                    pass
            try:
                obj[Attribute.PRIVATE_EXPONENT if obj[Attribute.KEY_TYPE] == pkcs11.KeyType.RSA else Attribute.VALUE]
                entry["value_readable"] = True
            except (AttributeSensitive, AttributeTypeInvalid):  # a TPM has no such value at all
                entry["value_readable"] = False
        objects.append(entry)
json.dump(sorted(objects, key=lambda o: (o["label"], o["class"])), sys.stdout)
