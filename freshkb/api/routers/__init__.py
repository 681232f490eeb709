"""The API's routes, one router per audience: answers, admin (escalations), health."""
