import TutorCruncher

/// A subject for ``TestEvents/event(_:subject:branch:id:timestamp:extra:)``: its `model`, `id`
/// and the rest of its fields.
public struct TestSubject: Sendable {
    public var model: SubjectType
    public var id: Int
    /// Every field but `model`, `id` and `url`, in order.
    public var fields: [(String, TestJSON)]

    public init(model: SubjectType, id: Int, fields: [(String, TestJSON)] = []) {
        self.model = model
        self.id = id
        self.fields = fields
    }

    var json: TestJSON {
        let path = model.rawValue.lowercased().replacingSpaces()
        return .object([("model", .string(model.rawValue)), ("id", .int(id)), ("url", .string("https://secure.tutorcruncher.com/api/\(path)s/\(id)/"))] + fields)
    }
}

/// Real-shaped subjects of each of the 16 types, as TutorCruncher sends them (keys and value
/// formats of its webhook payloads and API: money as decimal strings, people's contact details
/// under `user`, related records as `{id, name, url}`). Pass `overrides` to set or add fields.
public enum TestSubjects {
    static func reference(_ kind: String, _ id: Int, _ name: String) -> TestJSON {
        ["id": .int(id), "name": .string(name), "url": .string("https://secure.tutorcruncher.com/api/\(kind)/\(id)/")]
    }

    static func user(first: String, last: String, email: String) -> TestJSON {
        [
            "title": "Ms", "first_name": .string(first), "last_name": .string(last), "email": .string(email),
            "mobile": "07123 456789", "phone": nil, "street": "12 Chapel Road", "state": nil, "town": "London",
            "country": "United Kingdom (GB)", "postcode": "SW1A 1AA", "latitude": "51.5013", "longitude": "-0.1419",
            "date_created": "2024-09-02T10:15:00.000000Z", "timezone": "Europe/London",
        ]
    }

    static func make(_ model: SubjectType, _ id: Int, _ fields: [(String, TestJSON)], _ overrides: [(String, TestJSON)]) -> TestSubject {
        TestSubject(model: model, id: id, fields: TestJSON.object(fields).merging(overrides).members)
    }

    public static func tutor(id: Int = 1, _ overrides: [(String, TestJSON)] = []) -> TestSubject {
        make(.tutor, id, [
            ("user", user(first: "Jane", last: "Tutor", email: "jane.tutor@example.com")),
            ("status", "approved"), ("charge_via_branch", false), ("default_rate", "25.00"),
            ("qualifications", []), ("skills", [["id": 4, "subject": "Maths", "qual_level": "GCSE"]]), ("institutions", []),
            ("received_notifications", ["apt_reminders"]), ("review_rating", "4.8"), ("review_duration", "2 09:00:00"),
            ("last_updated", "2025-03-05T15:26:20.558919Z"), ("calendar_colour", "Khaki"), ("labels", []), ("extra_attrs", []),
            ("work_done_details", ["amount_owed": "120.00", "amount_paid": "480.00", "total_paid_hours": "19:12:00"]), ("photo", nil),
        ], overrides)
    }

    public static func client(id: Int = 1, _ overrides: [(String, TestJSON)] = []) -> TestSubject {
        make(.client, id, [
            ("user", user(first: "Sam", last: "Parent", email: "sam.parent@example.com")),
            ("status", "live"), ("is_taxable", true), ("auto_charge", 0), ("invoice_balance", "55.90"),
            ("available_balance", "0.00"), ("payment_pending", "0.00"), ("associated_admin", reference("admins", 7, "Test Admin")),
            ("associated_agent", nil), ("paid_recipients", [reference("recipients", 31, "Alex Parent")]), ("calendar_colour", "LightSkyBlue"),
            ("labels", []), ("extra_attrs", []), ("last_updated", "2025-03-05T15:26:20.558919Z"), ("received_notifications", []),
        ], overrides)
    }

    public static func student(id: Int = 1, _ overrides: [(String, TestJSON)] = []) -> TestSubject {
        make(.student, id, [
            ("user", user(first: "Alex", last: "Parent", email: "alex@example.com")),
            ("date_of_birth", "2012-05-14"), ("school", "Hillside Academy"), ("academic_year", "Year 8"),
            ("paid_recipient", nil), ("paying_client", reference("clients", 21, "Sam Parent")), ("calendar_colour", "Gold"),
            ("labels", []), ("extra_attrs", []), ("last_updated", "2025-03-05T15:26:20.558919Z"),
        ], overrides)
    }

    public static func affiliate(id: Int = 1, _ overrides: [(String, TestJSON)] = []) -> TestSubject {
        make(.affiliate, id, [
            ("user", user(first: "Ari", last: "Agent", email: "ari.agent@example.com")),
            ("commission_rate", "10.00"), ("labels", []), ("extra_attrs", []), ("last_updated", "2025-03-05T15:26:20.558919Z"),
        ], overrides)
    }

    public static func job(id: Int = 1, _ overrides: [(String, TestJSON)] = []) -> TestSubject {
        make(.job, id, [
            ("name", "GCSE Maths"), ("status", "in-progress"), ("description", "Weekly lessons"), ("dft_charge_type", "hourly"),
            ("dft_charge_rate", "45.00"), ("dft_contractor_rate", "25.00"), ("colour", "Khaki"), ("created", "2025-01-10T09:00:00.000000Z"),
            ("labels", []), ("extra_attrs", []), ("conjobs", [["contractor": 11, "name": "Jane Tutor", "pay_rate": "25.00"]]),
            ("rcrs", [["recipient": 31, "recipient_name": "Alex Parent", "paying_client": reference("clients", 21, "Sam Parent")]]),
        ], overrides)
    }

    public static func application(id: Int = 1, _ overrides: [(String, TestJSON)] = []) -> TestSubject {
        make(.application, id, [
            ("status", "pending"), ("description", "I can teach this"), ("service", reference("services", 5, "GCSE Maths")),
            ("contractor", reference("contractors", 11, "Jane Tutor")), ("created", "2025-01-11T09:00:00.000000Z"),
        ], overrides)
    }

    public static func lesson(id: Int = 1, _ overrides: [(String, TestJSON)] = []) -> TestSubject {
        make(.lesson, id, [
            ("start", "2025-03-06T16:00:00.000000Z"), ("finish", "2025-03-06T17:00:00.000000Z"), ("topic", "Quadratics"),
            ("status", "planned"), ("units", "1.00000"), ("charge_type", "hourly"),
            ("service", reference("services", 5, "GCSE Maths")), ("location", nil),
            ("cjas", [["contractor": 11, "contractor_name": "Jane Tutor", "pay_rate": "25.00"]]),
            ("rcras", [
                [
                    "recipient": 31, "recipient_name": "Alex Parent", "paying_client": reference("clients", 21, "Sam Parent"),
                    "charge_rate": "45.00", "status": "attended",
                ]
            ]),
        ], overrides)
    }

    public static func invoice(id: Int = 1, _ overrides: [(String, TestJSON)] = []) -> TestSubject {
        make(.invoice, id, [
            ("display_id", "INV-\(id)"), ("status", "unpaid"), ("date", "2025-03-01T00:00:00.000000Z"),
            ("date_sent", "2025-03-01T09:00:00.000000Z"), ("date_paid", nil), ("date_void", nil), ("gross", "120.00"),
            ("net", "100.00"), ("tax", "20.00"), ("still_to_pay", "120.00"), ("client", reference("clients", 21, "Sam Parent")),
        ], overrides)
    }

    public static func creditRequest(id: Int = 1, _ overrides: [(String, TestJSON)] = []) -> TestSubject {
        make(.creditRequest, id, [
            ("display_id", "CR-\(id)"), ("status", "unpaid"), ("amount", "200.00"), ("date", "2025-03-01T00:00:00.000000Z"),
            ("date_sent", nil), ("date_paid", nil), ("still_to_pay", "200.00"), ("client", reference("clients", 21, "Sam Parent")),
        ], overrides)
    }

    public static func paymentOrder(id: Int = 1, _ overrides: [(String, TestJSON)] = []) -> TestSubject {
        make(.paymentOrder, id, [
            ("display_id", "PO-\(id)"), ("status", "unpaid"), ("amount", "480.00"), ("date", "2025-03-01T00:00:00.000000Z"),
            ("date_sent", nil), ("date_paid", nil), ("date_void", nil), ("still_to_pay", "480.00"),
            ("payee", reference("contractors", 11, "Jane Tutor")),
        ], overrides)
    }

    public static func adHocCharge(id: Int = 1, _ overrides: [(String, TestJSON)] = []) -> TestSubject {
        make(.adHocCharge, id, [
            ("description", "Exam board fee"), ("date_occurred", "2025-03-01T00:00:00.000000Z"), ("category", ["id": 3, "name": "Fees"]),
            ("client_cost", "30.00"), ("pay_contractor", "0.00"), ("client", reference("clients", 21, "Sam Parent")),
            ("contractor", nil), ("service", reference("services", 5, "GCSE Maths")),
        ], overrides)
    }

    public static func report(id: Int = 1, _ overrides: [(String, TestJSON)] = []) -> TestSubject {
        make(.report, id, [
            ("approved", false), ("appointment", reference("appointments", 91, "Quadratics")),
            ("creator", reference("contractors", 11, "Jane Tutor")), ("client", reference("clients", 21, "Sam Parent")),
            ("service_recipient", reference("recipients", 31, "Alex Parent")),
            ("dt_created", "2025-03-06T18:00:00.000000Z"), ("extra_attrs", []),
        ], overrides)
    }

    public static func note(id: Int = 1, _ overrides: [(String, TestJSON)] = []) -> TestSubject {
        make(.note, id, [
            ("text", "Called about next term"), ("dt_created", "2025-03-06T18:00:00.000000Z"),
            ("creator", reference("admins", 7, "Test Admin")), ("focus", reference("clients", 21, "Sam Parent")),
        ], overrides)
    }

    public static func task(id: Int = 1, _ overrides: [(String, TestJSON)] = []) -> TestSubject {
        make(.task, id, [
            ("task_type", "Follow up"), ("description", "Ask about next term"), ("complete", false),
            ("due_dt", "2025-03-10T09:00:00.000000Z"), ("admin", reference("admins", 7, "Test Admin")),
        ], overrides)
    }

    public static func package(id: Int = 1, _ overrides: [(String, TestJSON)] = []) -> TestSubject {
        make(.package, id, [("name", "10 lessons"), ("description", "Prepaid block"), ("price", "400.00"), ("units", "10.00"), ("status", "active")], overrides)
    }

    public static func safeguardingConcern(id: Int = 1, _ overrides: [(String, TestJSON)] = []) -> TestSubject {
        make(.safeguardingConcern, id, [
            ("status", "open"), ("description", "Raised after a lesson"), ("dt_raised", "2025-03-06T18:00:00.000000Z"),
            ("service_recipient", reference("recipients", 31, "Alex Parent")), ("creator", reference("contractors", 11, "Jane Tutor")),
        ], overrides)
    }
}

extension TestJSON {
    var members: [(String, TestJSON)] {
        if case .object(let members) = self { return members }
        return []
    }
}

extension String {
    fileprivate func replacingSpaces() -> String { String(map { $0 == " " || $0 == "/" ? "-" : $0 }) }
}
