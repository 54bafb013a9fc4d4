import AMQPClient
import Testing
import TutorCruncher

@testable import TCBridge

/// The health and readiness policy for every broker state, with and without a usable spool.
@Suite struct BridgeHealthTests {
    let roomy = BridgeHealth.SpoolState(records: 3, bytes: 100, maxBytes: 1000)
    let full = BridgeHealth.SpoolState(records: 9, bytes: 1000, maxBytes: 1000)
    let broken = BridgeHealth.SpoolState(records: 0, bytes: 0, maxBytes: 1000, unavailableReason: "No space left on device")

    @Test func aConnectedBrokerIsHealthyAndReadyWithOrWithoutASpool() {
        for spool in [nil, roomy, full, broken] {
            let health = BridgeHealth(broker: .connected, spool: spool)
            #expect(health.isHealthy && health.isReady)
            #expect(health.healthAnswer.status == 200 && health.readinessAnswer.status == 200)
        }
    }

    @Test func aBlockedBrokerIsHealthyButReadyOnlyWithRoomInTheSpool() {
        #expect(BridgeHealth(broker: .blocked(reason: "memory"), spool: roomy).isReady)
        #expect(!BridgeHealth(broker: .blocked(reason: "memory"), spool: full).isReady)
        #expect(BridgeHealth(broker: .blocked(reason: "memory"), spool: nil).isHealthy)
        #expect(BridgeHealth(broker: .blocked(reason: "memory"), spool: nil).healthAnswer.body["reason"] == .string("memory"))
    }

    @Test func aBrokerThatIsDownIsUnhealthyAndReadyWhileTheSpoolTakesEvents() {
        for broker in [AMQPConnectionState.connecting, .disconnected(reason: "refused"), .closed] {
            #expect(!BridgeHealth(broker: broker, spool: roomy).isHealthy)
            #expect(BridgeHealth(broker: broker, spool: roomy).readinessAnswer.status == 200)
            #expect(BridgeHealth(broker: broker, spool: full).readinessAnswer.status == 503)
            #expect(BridgeHealth(broker: broker, spool: broken).readinessAnswer.status == 503)
            #expect(BridgeHealth(broker: broker, spool: nil).readinessAnswer.status == 503)
        }
    }

    @Test func aBrokerRefusingTheConfigurationIsNeverReadyAndSaysWhy() {
        let health = BridgeHealth(broker: .misconfigured(reason: "ACCESS_REFUSED"), spool: roomy)
        #expect(!health.isReady)
        #expect(health.readinessAnswer.status == 503)
        #expect(health.readinessAnswer.body["reason"] == .string("the broker refuses the bridge's configuration: ACCESS_REFUSED"))
        #expect(health.healthAnswer.body["broker"] == .string("misconfigured"))
    }

    @Test func theHealthAnswerReportsTheSpoolDepthAndRecordsSetAside() {
        var spool = roomy
        spool.corruptRecordsSetAside = 2
        let body = BridgeHealth(broker: .connected, spool: spool).healthAnswer.body
        #expect(body["spool"] == .object(JSONObject(["records": .number("3"), "bytes": .number("100"), "corrupt_records_set_aside": .number("2")])))
        #expect(body["status"] == .string("ok"))
    }
}
